"""A torchvision ResNet-18 state dict run by cnnumpy, PyTorch (eager) and ONNX Runtime.

    python benchmarks/bench_interop.py [--batch 16] [--repeats 10] [--warmup 2]

torchvision's resnet18 (seeded random weights and running statistics, as pretrained weights
would be: the arithmetic is the same) is saved with safetensors, loaded into cnnumpy's zoo
by `cnnumpy.interop.from_torch`, exported by `cnnumpy.interop.to_onnx` for ONNX Runtime, and
each of the three runs inference on one batch of 3x224x224 float32 images:

- cnnumpy: `BatchParallel(model).forward(x)` in evaluation mode (the batch over the cores,
  no caches), as `cnnumpy predict` and `evaluate` run a model, folding each BatchNorm into
  the convolution before it at every call where that pays (`Conv2D.infer_fused`); and a copy
  with every BatchNorm folded once beforehand (`cnnumpy.models.fold_batchnorm`, what
  `cnnumpy export --fold-batchnorm` writes for deployment);
- PyTorch: `net(x)` under `torch.inference_mode()`, its default threads;
- ONNX Runtime: `InferenceSession.run` of the exported file, CPU provider, default options.

Each figure is the median of `--repeats` timed runs; the libraries are timed in alternating
blocks (`bench_vs_torch.interleaved_medians`). Their logits are compared once. Then cnnumpy's
time per layer type (one whole-batch inference pass, every leaf timed) says where it goes.
torchvision's compiled extension is not needed: its model definitions are imported alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

import cnnumpy as cn
from cnnumpy.init import ZeroDraws
from cnnumpy.parallel import BatchParallel

sys.path.insert(0, str(Path(__file__).parent))
from bench_vs_torch import blas_kernel, interleaved_medians, timed_leaves  # noqa: E402


def torchvision_models():
    """torchvision.models without torchvision's __init__ (whose C++ operators the CPU build
    of torch lacks)."""
    if "torchvision" not in sys.modules:
        spec = importlib.util.find_spec("torchvision")
        package = types.ModuleType("torchvision")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["torchvision"] = package
    import torchvision.models

    return torchvision.models


def seeded_resnet18(torch):
    torch.manual_seed(0)
    net = torchvision_models().resnet18().eval()
    for name, value in net.state_dict().items():
        if name.endswith("running_mean"):
            value.copy_(torch.randn(value.shape) * 0.1)
        elif name.endswith("running_var"):
            value.copy_(torch.rand(value.shape) + 0.5)
    return net


def time_per_layer_type(model, x, repeats: int = 3) -> dict[str, float]:
    """Median seconds of each leaf's forward (inference, whole batch), summed by type; a
    convolution that ran with the BatchNorm and ReLU after it (`Conv2D.infer_fused`) counts
    as "Conv2D fused", a residual block's sum and ReLU taken in place as "... in place"."""
    methods = ("forward", "infer_fused", "add_into", "infer_in_place")
    with timed_leaves(model, methods) as (times, _, leaves):
        for _ in range(repeats):
            model(x, keep_cache=False)
    by_type: dict[str, float] = {}
    for method, suffix in zip(methods, ("", " fused", " in place", " in place")):
        for name, samples in times[method].items():
            kind = type(leaves[name]).__name__ + suffix
            by_type[kind] = by_type.get(kind, 0.0) + statistics.median(samples)
    return by_type


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch
    from safetensors.torch import save_file

    net = seeded_resnet18(torch)
    model = cn.models.resnet18(rng=ZeroDraws())
    with tempfile.TemporaryDirectory(prefix="bench_interop.") as tmp:  # ~90 MB, removed
        folder = Path(tmp)
        save_file(net.state_dict(), folder / "resnet18.safetensors")
        state = cn.interop.load_state_file(folder / "resnet18.safetensors")
        model.load_state_dict(cn.interop.from_torch(state, model))
        model.eval()
        cn.interop.to_onnx(model, folder / "resnet18.onnx")
        session = ort.InferenceSession(str(folder / "resnet18.onnx"),
                                       providers=["CPUExecutionProvider"])

    x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
    x_torch = torch.from_numpy(x)
    passes = BatchParallel(model)
    folded = BatchParallel(cn.models.fold_batchnorm(model))

    def run_torch():
        with torch.inference_mode():
            return net(x_torch)

    runs = {"cnnumpy": lambda: passes.forward(x), "cnnumpy fold": lambda: folded.forward(x),
            "pytorch": run_torch, "onnxruntime": lambda: session.run(None, {"input": x})[0]}
    reference = run_torch().numpy()
    for name in ("cnnumpy", "cnnumpy fold", "onnxruntime"):
        error = np.abs(np.asarray(runs[name]()) - reference).max() / np.abs(reference).max()
        print(f"{name} logits vs PyTorch's: relative error {error:.1e}")
    seconds = interleaved_medians(runs, args.warmup, args.repeats)

    print(f"\nResNet-18 (torchvision's state dict), inference, {args.batch}x3x224x224 float32")
    print(f"BLAS: {blas_kernel()}; PyTorch threads: {torch.get_num_threads()}; "
          f"cnnumpy parts per batch: {passes.workers}")
    print(f"{'library':<13} {'median s':>9} {'images/s':>9} {'vs PyTorch':>11}")
    for name, median in seconds.items():
        print(f"{name:<13} {median:9.3f} {args.batch / median:9.1f} "
              f"{seconds['pytorch'] / median:10.2f}x")

    print("\ncnnumpy's inference time by layer type (whole batch, one thread pool):")
    by_type = time_per_layer_type(model, x)
    total = sum(by_type.values())
    for kind, spent in sorted(by_type.items(), key=lambda item: -item[1]):
        print(f"  {kind:<18} {spent:7.3f} s  {100 * spent / total:5.1f} %")


if __name__ == "__main__":
    main()
