"""What BatchNorm and the residual add cost, counted in passes over the activations.

    python benchmarks/batchnorm_passes.py [--repeats 40]
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/batchnorm_passes.py

For each activation shape of ResNet-20 at 64 images (the part of a batch of 128 that one
core gets), float32, one thread, channels-last memory as the kernels write it:

    one pass        x * 2 into another array (recycled memory, as the kernels' outputs are):
                    one read and one write of the activations
    BN forward      `functional.batchnorm_forward` (training: the batch's statistics), with
                    the fused loops (`functional.fused`, when Numba is installed) and with
                    the NumPy passes
    BN backward     `functional.batchnorm_backward`, both ways
    add             the residual sum a + b into a new array (`layers.Add` in training)
    torch BN        PyTorch's BatchNorm2d forward, then forward and backward minus forward
                    (NCHW and channels-last tensors), when PyTorch is installed

each as a median time and as that time divided by one pass's. In NumPy, cnnumpy's BatchNorm
makes five passes in forward (two that only read: the sums for the mean and for the variance
of the centred values) and six in backward (two that only read), as NumPy runs one operation
per pass; fused, two each way (one that reads, one that writes). The columns say what they
cost next to one pass and to PyTorch's fused kernels.
The rows are timed in turn, block by block (`bench_vs_torch.interleaved_medians`), so that
a drift of the machine's speed meets every row alike.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from cnnumpy import workspace  # noqa: E402
from cnnumpy.functional import batchnorm_backward, batchnorm_forward, fused  # noqa: E402

from bench_vs_torch import blas_kernel, interleaved_medians  # noqa: E402

SHAPES = [(64, 16, 32, 32), (64, 32, 16, 16), (64, 64, 8, 8)]


def torch_runs(x: np.ndarray, g: np.ndarray) -> dict:
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(1)
    runs = {}
    for label, layout in (("NCHW", torch.contiguous_format), ("channels-last",
                                                              torch.channels_last)):
        bn = torch.nn.BatchNorm2d(x.shape[1])
        tx = torch.from_numpy(np.ascontiguousarray(x)).to(memory_format=layout)
        tx.requires_grad_()
        tg = torch.from_numpy(np.ascontiguousarray(g)).to(memory_format=layout)
        runs[f"torch {label} forward"] = lambda bn=bn, tx=tx: bn(tx)
        runs[f"torch {label} f+b"] = lambda bn=bn, tx=tx, tg=tg: bn(tx).backward(tg)
    return runs


def batchnorm_runs(way: str, x, g, gamma, beta) -> dict:
    """BatchNorm's forward and backward with the fused loops or the NumPy passes."""
    def run(function, *args):
        def timed():
            fused.enabled = way == "fused"
            function(*args)
        return timed

    fused.enabled = way == "fused"
    cache = batchnorm_forward(x, gamma, beta, 1e-5)[1]
    return {f"BN forward ({way})": run(batchnorm_forward, x, gamma, beta, 1e-5),
            f"BN backward ({way})": run(batchnorm_backward, g, cache)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    print(f"NumPy {np.__version__}, BLAS {blas_kernel()}, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    rng = np.random.default_rng(0)
    for n, c, h, w in SHAPES:
        channels_last = lambda: rng.standard_normal((n, h, w, c), dtype=np.float32
                                                    ).transpose(0, 3, 1, 2)
        x, g, b = channels_last(), channels_last(), channels_last()
        gamma, beta = np.ones(c, np.float32), np.zeros(c, np.float32)
        runs = {"one pass": lambda: np.multiply(x, 2, out=workspace.empty_like(x))}
        for way in ("fused", "NumPy") if fused.available else ("NumPy",):
            runs.update(batchnorm_runs(way, x, g, gamma, beta))
        runs.update({"add": lambda: np.add(x, b, out=workspace.empty_like(x)),
                     **torch_runs(x, g)})
        ms = {name: 1e3 * seconds
              for name, seconds in interleaved_medians(runs, 1, args.repeats).items()}
        for layout in ("NCHW", "channels-last"):
            if f"torch {layout} f+b" in ms:
                ms[f"torch {layout} backward"] = (ms.pop(f"torch {layout} f+b")
                                                  - ms[f"torch {layout} forward"])
        size = n * c * h * w * 4 / 2**20
        print(f"\n{f'{n}x{c}x{h}x{w} ({size:.0f} MiB)':<32} ms passes")
        for name, value in ms.items():
            print(f"  {name:<30} {value:6.3f} {value / ms['one pass']:6.1f}")


if __name__ == "__main__":
    main()
