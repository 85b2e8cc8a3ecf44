"""A model of data-parallel step time for P = 1 ... 256 ranks: where does scaling stop, and why?

    python benchmarks/scaling_model.py [--measured bench.json]

One step on P ranks = compute on the rank's part of the batch, its share of the update, and
the exchange (cnnumpy.distributed: a reduce-scatter of the gradients, each rank updates 1/P
of the parameters, an allgather of the new values):

    T(P) = T_c(n) - U (P - 1) / P + T_copy / P + T_ring(P),   T_c(n) = a + b n   (n images)
    T_ring(P) = 2 (P - 1) / P x S / bandwidth + 2 (P - 1) x latency

T_ring is the reduce-scatter and the allgather of S gradient bytes, as in a ring allreduce
(each rank sends and receives 2 (P - 1) / P of the buffer in 2 (P - 1) messages); T_copy / P
writes a rank's summed part of the gradients back into their flat buffer (the parameters and
gradients live in flat buffers that the collectives read and write directly); U is the SGD
update of all the parameters, part of a in one process. a, b and U are measured here: a
training step of SimpleCNN (1x28x28) on n images (gather, crop, flip, normalise, forward,
backward, SGD) in one process with one BLAS thread, fitted by least squares. ResNet-20
(0.27 M parameters) is estimated from them: its b is SimpleCNN's times the ratio of training
multiply-accumulates per image at 1x28x28 (5.7; PyTorch's seconds per epoch measured here
give 3.1, printed as the lighter case), its a SimpleCNN's times the ratio of layer calls (20
convolutions, 19 BatchNorms, 19 ReLUs, 9 additions, pooling and the classifier: about 70
against 9).

Two ways to use P ranks:
    strong: a global batch of 128 (the recipe) split over P <= 128 ranks: n = 128 / P
    weak:   128 images per rank, a global batch of 128 P (needs a retuned learning rate)
Networks: 10 Gbit/s Ethernet (TCP, 25 us per message) and 100 Gbit/s (InfiniBand or RoCE,
RDMA, 2 us per message); gradients in float32. Scaling stops where T(P) stops falling (the
speed-up's peak); efficiency = T(1) / (P T(P)) for strong scaling, T_c(128) / T(P) for weak.

`--measured F` (from benchmarks/bench_distributed.py --json F) checks the model against the
measured 2-rank step on this machine with the buffers sent by MPI's collectives (as between
machines; the "network" is Open MPI's shared-memory transport): the model's T(2) with the
measured transfer (reduce-scatter and allgather after a Barrier) against the measured step.
It also prints the measured step of ranks that share their buffers (cnnumpy's default on one
machine), where no bytes travel: T_ring is two barriers and T_copy the sum of the halves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

SIMPLECNN_PARAMS = 1_630_090
RESNET20_PARAMS = 272_186
NETWORKS = {"10 Gbit/s": (10e9 / 8, 25e-6), "100 Gbit/s": (100e9 / 8, 2e-6)}
COPY_S_PER_BYTE = 2 / 10e9  # a copy of all the gradients, a read and a write, at ~10 GB/s
SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def conv_macs(size, c_in, c_out, k=3):
    return size * size * c_out * c_in * k * k


def simplecnn_macs():
    return (conv_macs(28, 1, 32) + conv_macs(14, 32, 64) + 64 * 7 * 7 * 512 + 512 * 10)


def resnet20_macs():
    """ResNet-20 (He et al. 2016, CIFAR layout) at 1x28x28: 16, 32, 64 channels at 28, 14, 7
    pixels, 3 blocks of two 3x3 convolutions per stage, 1x1 projections where shapes change."""
    total = conv_macs(28, 1, 16)
    for stage, (size, width) in enumerate(((28, 16), (14, 32), (7, 64))):
        for block in range(3):
            c_in = width // 2 if stage and block == 0 else width
            total += conv_macs(size, c_in, width) + conv_macs(size, width, width)
            if stage and block == 0:
                total += conv_macs(size, c_in, width, k=1)
    return total + 64 * 10


def measure_compute(repeats: int = 9) -> tuple[dict[int, float], float]:
    """Median seconds of a SimpleCNN training step on n images, and of its optimizer update
    alone, one BLAS thread."""
    from threadpoolctl import threadpool_limits

    import cnnumpy as cn
    from cnnumpy.data import load_dataset
    from cnnumpy.train import prepare_batch

    data = load_dataset("fashion-mnist", "train").subset(slice(0, 128))
    normalization = cn.data.channel_stats(data.images)
    model = cn.SimpleCNN((1, 28, 28), 10, rng=np.random.default_rng(0), init="uniform")
    opt = cn.SGD(model, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    criterion, rng = cn.CrossEntropyLoss(), np.random.default_rng(0)
    times = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for n in SIZES:
            samples = []
            for repeat in range(repeats + 2):
                started = time.perf_counter()
                x = prepare_batch(data.images[:n], normalization, np.float32, rng=rng,
                                  crop_padding=2, flip=True)
                criterion.forward(model.forward(x), data.labels[:n])
                model.backward(criterion.backward(), input_grad=False)
                opt.step()
                samples.append(time.perf_counter() - started)
            times[n] = statistics.median(samples[2:])
        updates = []
        for repeat in range(repeats):
            started = time.perf_counter()
            opt.step()
            updates.append(time.perf_counter() - started)
    return times, statistics.median(updates)


def ring(parameters: int, ranks: int, bandwidth: float, latency: float, bytes_per=4) -> float:
    if ranks == 1:
        return 0.0
    size = parameters * bytes_per
    return 2 * (ranks - 1) / ranks * size / bandwidth + 2 * (ranks - 1) * latency


def step_time(model, ranks, network, *, strong=True, fp16=False, overlap=False) -> float:
    """Modelled seconds per step; overlap hides the ring behind backward (2/3 of compute)."""
    a, b, parameters, update = model
    bandwidth, latency = NETWORKS[network]
    n = 128 / ranks if strong else 128
    compute = a - update * (ranks - 1) / ranks + b * n
    if ranks == 1:
        return compute
    bytes_per = 2 if fp16 else 4
    communication = ring(parameters, ranks, bandwidth, latency, bytes_per) \
        + COPY_S_PER_BYTE * parameters * bytes_per / ranks
    if overlap:
        communication = max(0.0, communication - 2 / 3 * (compute - a))
    return compute + communication


def peak(model, network, **options):
    """(P of the fastest step, its speed-up, the last P at >= 50% efficiency), strong scaling."""
    allowed = [p for p in RANKS if p <= 128]
    one = step_time(model, 1, network, **options)
    speedup = {p: one / step_time(model, p, network, **options) for p in allowed}
    best = max(allowed, key=speedup.get)
    half = max(p for p in allowed if speedup[p] / p >= 0.5)
    return best, speedup[best], half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measured", type=Path, help="JSON of bench_distributed.py --json")
    args = parser.parse_args()

    times, update = measure_compute()
    n = np.array(SIZES, dtype=float)
    b, a = np.polyfit(n, np.array([times[s] for s in SIZES]), 1)
    print("SimpleCNN training step on n images, one process, one BLAS thread (measured, and "
          "the fit a + b n):")
    print("  n     " + "".join(f"{s:>8}" for s in SIZES))
    print("  ms    " + "".join(f"{1e3 * times[s]:>8.2f}" for s in SIZES))
    print("  fit   " + "".join(f"{1e3 * (a + b * s):>8.2f}" for s in SIZES))
    macs_ratio = 3 * resnet20_macs() / (3 * simplecnn_macs())
    print(f"  a = {1e3 * a:.2f} ms per step (of which the SGD update of the 1.6 M parameters, "
          f"U = {1e3 * update:.2f} ms, shared out over the ranks), b = {1e3 * b:.3f} ms per "
          f"image")
    # ResNet-20: the update scales with the parameters, the rest of a with the layer calls
    update_resnet = update * RESNET20_PARAMS / SIMPLECNN_PARAMS
    a_resnet = update_resnet + (a - update) * 70 / 9
    print(f"  training MACs per image: SimpleCNN {3 * simplecnn_macs() / 1e6:.1f} M, ResNet-20 "
          f"{3 * resnet20_macs() / 1e6:.1f} M (x{macs_ratio:.1f}); ResNet-20 estimated a = "
          f"{1e3 * a_resnet:.1f} ms, b = {1e3 * b * macs_ratio:.2f} ms per image (light: "
          f"{1e3 * b * 3.1:.2f})\n")
    models = {
        "SimpleCNN": (a, b, SIMPLECNN_PARAMS, update),
        "ResNet-20": (a_resnet, b * macs_ratio, RESNET20_PARAMS, update_resnet),
        "ResNet-20 (light)": (a_resnet, b * 3.1, RESNET20_PARAMS, update_resnet),
    }

    for strong in (True, False):
        label = "strong: global batch 128 over P ranks" if strong else \
            "weak: 128 images per rank (global batch 128 P)"
        print(f"{label}; ms per step (efficiency)")
        print(f"  {'model':<18}{'network':<11}" + "".join(f"{p:>13}" for p in RANKS))
        for name, model in models.items():
            one = step_time(model, 1, "10 Gbit/s", strong=strong)
            for network in NETWORKS:
                cells = []
                for p in RANKS:
                    if strong and p > 128:
                        cells.append(f"{'-':>13}")
                        continue
                    t = step_time(model, p, network, strong=strong)
                    efficiency = one / (p * t) if strong else one / t
                    cells.append(f"{1e3 * t:>7.1f} ({efficiency:>3.0%})")
                print(f"  {name:<18}{network:<11}" + "".join(cells))
        print()

    print("Strong scaling (global batch 128): P of the fastest step, its speed-up, and the "
          "largest P at >= 50% efficiency")
    print(f"  {'model':<18}{'network':<11}{'as built':>18}{'fp16 grads':>18}"
          f"{'overlapped':>18}{'both':>18}")
    for name, model in models.items():
        for network in NETWORKS:
            cells = [peak(model, network, fp16=f, overlap=o)
                     for f, o in ((False, False), (True, False), (False, True), (True, True))]
            print(f"  {name:<18}{network:<11}"
                  + "".join(f"{f'P={p} x{s:.1f} | {h}':>18}" for p, s, h in cells))

    if args.measured:
        measured = json.loads(args.measured.read_text())
        if measured.get("model", "simplecnn") != "simplecnn":
            raise SystemExit(f"{args.measured} measured {measured['model']}; this model is "
                             f"SimpleCNN's (run bench_distributed.py without --model)")
        rounds = measured["rounds"]
        print("\nThe model against the measured 2-rank step on this machine, the buffers sent "
              "(Open MPI's shared-memory transport):")
        for number, figures in enumerate(rounds, start=1):
            one, two = figures["1 rank"], figures["2 ranks sent"]
            compute = one["step"] * (a + b * 64) / (a + b * 128) - update / 2  # T_c(64) - U/2
            copies = two["reduce"] + two["share"] - two["scatter"] - two["gather"]
            predicted = compute + copies + two["transfer"]
            print(f"  round {number}: 1 rank {1e3 * one['step']:.1f} ms; 2 ranks predicted "
                  f"{1e3 * predicted:.1f} ms (compute {1e3 * compute:.1f} + copies "
                  f"{1e3 * copies:.1f} + transfer {1e3 * two['transfer']:.1f}), measured "
                  f"{1e3 * two['step']:.1f} ms; speed-up predicted "
                  f"{one['step'] / predicted:.2f}, measured {one['step'] / two['step']:.2f}; "
                  f"buffers shared: {1e3 * figures['2 ranks']['step']:.1f} ms, speed-up "
                  f"{one['step'] / figures['2 ranks']['step']:.2f}")


if __name__ == "__main__":
    main()
