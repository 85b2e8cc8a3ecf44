"""Training-step speed of cnnumpy (float32) against the lesson's loops (float64).

    python benchmarks/bench_vs_lesson.py [--batch 16] [--repeats 5]

A training step is forward + backward of SimpleCNN at 3x32x32 (the lesson's shape). Both run in
this process, one after the other, and the ratio of their median images/s is printed.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import lesson_loops  # noqa: E402

import cnnumpy as cn  # noqa: E402


def median_images_per_second(step, batch: int, repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lesson-repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 3, 32, 32))

    np.random.seed(0)
    lesson = lesson_loops.SimpleCNN()

    def lesson_step():
        out = lesson.forward(x)
        lesson.backward(np.ones_like(out) / len(out))

    model = cn.SimpleCNN((3, 32, 32), 10, rng=rng)
    x32 = x.astype(np.float32)

    def cnnumpy_step():
        out = model.forward(x32)
        model.backward(np.ones_like(out) / len(out))

    lesson_rate = median_images_per_second(lesson_step, args.batch, args.lesson_repeats)
    cnnumpy_rate = median_images_per_second(cnnumpy_step, args.batch, args.repeats)
    print(f"SimpleCNN 3x32x32, batch {args.batch}, training step (forward + backward)")
    print(f"{'implementation':<26}{'images/s':>12}")
    print(f"{'lesson loops (float64)':<26}{lesson_rate:>12.1f}")
    print(f"{'cnnumpy (float32)':<26}{cnnumpy_rate:>12.1f}")
    print(f"ratio cnnumpy / lesson: {cnnumpy_rate / lesson_rate:.0f}x")


if __name__ == "__main__":
    main()
