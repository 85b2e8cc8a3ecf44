"""Where a convolution's time goes, shape by shape: cnnumpy's im2col copy and matrix product
against PyTorch's convolution, one thread each.

    python benchmarks/conv_shapes.py [--model resnet20] [--input-shape 3,32,32] [--batch 128]
                                     [--backward]
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/conv_shapes.py

For every distinct convolution of the model (traced on one batch), the forward pass as
`cnnumpy.functional.conv2d_forward` computes it: the column matrix (`im2col`, rows =
N·H_out·W_out, K = C_in·kH·kW + 1) and its product with the (K, C_out) weight matrix, each
timed alone (median of `--repeats`), the product's GFLOP/s against NumPy's square 1024 GEMM
rate, the whole `conv2d_forward` (chunked over the batch, as the layers run it: stride-1
3x3 convolutions with 128 or more channels go by Winograd's F(2x2, 3x3), `conv2d_winograd`,
and other stride-1 convolutions with small kernel rows by one product per kernel row,
`conv2d_by_kernel_rows`, so for those the im2col and GEMM columns are the path not taken), and
`torch.nn.functional.conv2d` on the same input (channels-last memory, as cnnumpy's); the last
column, "vs torch", is PyTorch's time over cnnumpy's (1: as fast). One thread for both
libraries: the question is what the arithmetic costs, not how it is spread over cores. The
second command runs NumPy's own OpenBLAS kernel choice on machines that set
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for old OpenBLAS builds.

With --backward, a second table, the backward pass of each convolution: its weight gradient
by im2col columns (columns again, then colsᵀ · dout: a product of (K+1) x rows by rows x
C_out, whose small output OpenBLAS computes at a fraction of its square-matrix rate) and
that product alone, the reference; the weight gradient as `conv2d_backward` makes it (by
kernel rows, one product per image and kernel row, where forward would go that way) against
PyTorch's weight and bias gradients; and the whole backward (dx too) against PyTorch's.
Tried and dropped: dw from shifted views of the padded input (kH·kW products of C_in x rows
by rows x C_out, no columns): the products are narrower still and ran no faster than the
columns' copy plus one product.

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
                                     conv2d_backward, conv2d_forward, im2col, image_chunks)
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


def random_inputs(model, input_shape, batch):
    """For each distinct convolution of the model, a random input as its kernel sees it:
    (layer, the NCHW view of a channels-last array (what every kernel returns), its padded
    form in the column layout the kernel chooses, that choice, the output's channels-last
    shape)."""
    rng = np.random.default_rng(0)
    for layer, (n, c, h, w) in distinct_convolutions(model, input_shape, batch):
        x = to_nchw(np.ascontiguousarray(rng.standard_normal((n, h, w, c), dtype=np.float32)))
        c_out, _, kh, kw = layer.W.shape
        (ph, pw), (sh, sw) = pair(layer.padding), pair(layer.stride)
        h_out, w_out = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        channels_last = use_channels_last_columns(c, kw, w_out)
        yield (layer, x, pad2d(x, layer.padding, channels_last), channels_last,
               (n, h_out, w_out, c_out))


def row_start(layer, x) -> str:
    """A table row's first columns: input shape, output channels, kernel size / stride."""
    c_out, _, kh, _ = layer.W.shape
    return f"{str(x.shape):>16} {c_out:>5} {f'{kh}/{pair(layer.stride)[1]}':>4}"


def product_rate(m: int, k: int, n: int, milliseconds: float) -> tuple[str, float]:
    """An (m x k)·(k x n) product's shape for a table cell, and its GFLOP/s at that time."""
    return f"{f'{m}x{k}x{n}':>18}", 2 * m * k * n / milliseconds / 1e6


def channels_last_tensor(torch, x):
    """The NCHW array x as a PyTorch tensor in channels-last memory, as cnnumpy's kernels hold it."""
    return torch.from_numpy(np.ascontiguousarray(x)).contiguous(memory_format=torch.channels_last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--input-shape", default="3,32,32")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--backward", action="store_true",
                        help="also the weight gradient of each convolution")
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
    for layer, x, x_pad, channels_last, _ in random_inputs(model, input_shape, args.batch):
        c_out, _, kh, kw = layer.W.shape
        cols = np.ascontiguousarray(im2col(x_pad, (kh, kw), layer.stride, channels_last))
        w_mat = np.concatenate([_weight_matrix(layer.W, channels_last),
                                np.zeros((c_out, 1), np.float32)], axis=1)
        out = np.empty((len(cols), c_out), np.float32)
        t_cols = median_ms(lambda: im2col(x_pad, (kh, kw), layer.stride, channels_last),
                           args.repeats)
        t_gemm = median_ms(lambda: np.matmul(cols, w_mat.T, out=out), args.repeats)
        t_conv = median_ms(lambda: conv2d_forward(x, layer.W, None, layer.stride,
                                                  layer.padding), args.repeats)
        product, gflops = product_rate(cols.shape[0], cols.shape[1], c_out, t_gemm)
        line = (f"{row_start(layer, x)} {product} {t_cols:7.1f} {t_gemm:7.1f} "
                f"{gflops:8.0f} {gflops / rate:9.0%} {t_conv:7.1f}")
        if torch is not None:
            tx, tw = channels_last_tensor(torch, x), torch.from_numpy(layer.W)
            t_torch = median_ms(lambda: torch.nn.functional.conv2d(
                tx, tw, None, layer.stride, layer.padding), args.repeats)
            line += f" {t_torch:7.1f} {t_torch / t_conv:8.2f}"
        print(line)
    if args.backward:
        weight_gradients(model, input_shape, args, torch)


def weight_gradients(model, input_shape, args, torch) -> None:
    """The backward pass of each distinct convolution: the weight gradient by im2col columns
    (chunk by chunk, then colsᵀ · dout, and the product alone on the whole batch's columns:
    the reference), the weight gradient as `conv2d_backward` makes it (by kernel rows where
    forward would go that way), and the whole backward (dx, dw and db, as a layer that is
    not the first makes them); PyTorch's `convolution_backward` asked for the same."""
    print("\nbackward of each distinct convolution (ms)")
    print(f"{'input':>16} {'C_out':>5} {'k/s':>4} {'colsT·dout':>18} {'im2col':>7} {'GEMM':>7} "
          f"{'GFLOP/s':>8} {'dw':>7} {'torch':>7} {'vs torch':>8} {'dx+dw':>7} {'torch':>7} "
          f"{'vs torch':>8}")
    rng = np.random.default_rng(1)
    for layer, x, x_pad, channels_last, out_shape in random_inputs(model, input_shape, args.batch):
        c_out, _, kh, kw = layer.W.shape
        dout = rng.standard_normal(out_shape, dtype=np.float32)  # (N, H_out, W_out, C_out)

        def by_columns():
            return sum(im2col(x_pad[chunk], (kh, kw), layer.stride, channels_last).T
                       @ dout[chunk].reshape(-1, c_out)
                       for chunk in image_chunks(x_pad, (kh, kw), layer.stride, channels_last,
                                                 layer.W.nbytes))

        cols = im2col(x_pad, (kh, kw), layer.stride, channels_last)
        dout_rows = dout.reshape(-1, c_out)
        t_columns = median_ms(by_columns, args.repeats)
        t_gemm = median_ms(lambda: cols.T @ dout_rows, args.repeats)
        product, gflops = product_rate(cols.shape[1], cols.shape[0], c_out, t_gemm)
        del cols
        _, cache = conv2d_forward(x, layer.W, np.zeros(c_out, np.float32), layer.stride,
                                  layer.padding)
        t_dw = median_ms(lambda: conv2d_backward(to_nchw(dout), cache, input_grad=False),
                         args.repeats)
        t_all = median_ms(lambda: conv2d_backward(to_nchw(dout), cache), args.repeats)
        line = (f"{row_start(layer, x)} {product} {t_columns:7.1f} {t_gemm:7.1f} {gflops:8.0f}"
                f" {t_dw:7.1f}")
        if torch is not None:
            tx, tw = channels_last_tensor(torch, x), torch.from_numpy(layer.W)
            tdout = channels_last_tensor(torch, to_nchw(dout))

            def torch_backward(input_grad):
                return torch.ops.aten.convolution_backward(
                    tdout, tx, tw, [c_out], list(pair(layer.stride)), list(pair(layer.padding)),
                    [1, 1], False, [0, 0], 1, [input_grad, True, True])

            t_torch_dw = median_ms(lambda: torch_backward(False), args.repeats)
            t_torch_all = median_ms(lambda: torch_backward(True), args.repeats)
            line += (f" {t_torch_dw:7.1f} {t_torch_dw / t_dw:8.2f} {t_all:7.1f}"
                     f" {t_torch_all:7.1f} {t_torch_all / t_all:8.2f}")
        else:
            line += f" {'':>7} {'':>8} {t_all:7.1f}"
        print(line)


if __name__ == "__main__":
    main()
