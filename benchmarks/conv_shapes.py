"""Where a convolution's time goes, shape by shape: cnnumpy's im2col copy and matrix product
against PyTorch's convolution, one thread each.

    python benchmarks/conv_shapes.py [--model resnet20] [--input-shape 3,32,32] [--batch 128]
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/conv_shapes.py

For every distinct convolution of the model (traced on one batch), the forward pass as
`cnnumpy.functional.conv2d_forward` computes it: the column matrix (`im2col`, rows =
N·H_out·W_out, K = C_in·kH·kW + 1) and its product with the (K, C_out) weight matrix, each
timed alone (median of `--repeats`), the product's GFLOP/s against NumPy's square 1024 GEMM
rate, the whole `conv2d_forward` (chunked over the batch, as the layers run it), and
`torch.nn.functional.conv2d` on the same input (channels-last memory, as cnnumpy's); the last
column, "vs torch", is PyTorch's time over cnnumpy's (1: as fast). One thread for both
libraries: the question is what the arithmetic costs, not how it is spread over cores. The
second command runs NumPy's own OpenBLAS kernel choice on machines that set
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for old OpenBLAS builds.

The product's width is C_out: with 16-64 output channels OpenBLAS's float32 GEMM runs at a
fraction of its square-matrix rate, which bounds what an im2col convolution can reach.
"""

from __future__ import annotations

import os
import sys

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before NumPy is imported

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import cnnumpy as cn  # noqa: E402
from cnnumpy.functional.conv import (_weight_matrix, use_channels_last_columns,  # noqa: E402
                                     conv2d_forward, im2col)
from cnnumpy.functional.windowing import pad2d, pair, to_nchw  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_vs_torch import blas_kernel, gemm_rate  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def distinct_convolutions(model, input_shape, batch):
    """(layer, input shape) of each convolution with a shape not seen before, in forward order."""
    trace = cn.trace.record(model, np.zeros((batch, *input_shape), np.float32))
    seen, found = set(), []
    for call in trace.leaves():
        layer, shape = call.module, call.inputs[0].shape
        if isinstance(layer, cn.Conv2D):
            key = (shape, layer.W.shape, layer.stride, layer.padding)
            if key not in seen:
                seen.add(key)
                found.append((layer, shape))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--input-shape", default="3,32,32")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    input_shape = tuple(int(size) for size in args.input_shape.split(","))
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None

    rate = gemm_rate()
    print(f"BLAS: {blas_kernel()} (OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}); "
          f"float32 GEMM 1024^3: {rate:.0f} GFLOP/s, one thread")
    model = cn.build_model({"name": args.model, "input_shape": list(input_shape),
                            "num_classes": 10}, rng=np.random.default_rng(0))
    print(f"{args.model} {args.input_shape} batch {args.batch}, forward of each distinct "
          f"convolution (ms)")
    print(f"{'input':>16} {'C_out':>5} {'k/s':>4} {'GEMM MxKxN':>18} {'im2col':>7} {'GEMM':>7} "
          f"{'GFLOP/s':>8} {'of 1024^3':>9} {'conv2d':>7} {'torch':>7} {'vs torch':>8}")
    rng = np.random.default_rng(0)
    for layer, shape in distinct_convolutions(model, input_shape, args.batch):
        n, c, h, w = shape
        x = to_nchw(np.ascontiguousarray(
            rng.standard_normal((n, h, w, c), dtype=np.float32)))  # channels-last memory
        c_out, _, kh, kw = layer.W.shape
        (_, pw), (_, sw) = pair(layer.padding), pair(layer.stride)
        channels_last = use_channels_last_columns(c, kw, (w + 2 * pw - kw) // sw + 1)
        x_pad = pad2d(x, layer.padding, channels_last)
        cols = np.ascontiguousarray(im2col(x_pad, (kh, kw), layer.stride, channels_last))
        w_mat = np.concatenate([_weight_matrix(layer.W, channels_last),
                                np.zeros((c_out, 1), np.float32)], axis=1)
        out = np.empty((len(cols), c_out), np.float32)
        t_cols = median_ms(lambda: im2col(x_pad, (kh, kw), layer.stride, channels_last),
                           args.repeats)
        t_gemm = median_ms(lambda: np.matmul(cols, w_mat.T, out=out), args.repeats)
        t_conv = median_ms(lambda: conv2d_forward(x, layer.W, None, layer.stride,
                                                  layer.padding), args.repeats)
        gflops = 2 * cols.shape[0] * cols.shape[1] * c_out / t_gemm / 1e6
        line = (f"{str(tuple(shape)):>16} {c_out:>5} {f'{kh}/{sw}':>4} "
                f"{f'{cols.shape[0]}x{cols.shape[1]}x{c_out}':>18} {t_cols:7.1f} {t_gemm:7.1f} "
                f"{gflops:8.0f} {gflops / rate:9.0%} {t_conv:7.1f}")
        if torch is not None:
            tx = torch.from_numpy(np.ascontiguousarray(x)).to(memory_format=torch.channels_last)
            tw = torch.from_numpy(layer.W)
            t_torch = median_ms(lambda: torch.nn.functional.conv2d(
                tx, tw, None, layer.stride, layer.padding), args.repeats)
            line += f" {t_torch:7.1f} {t_torch / t_conv:8.2f}"
        print(line)


if __name__ == "__main__":
    main()
