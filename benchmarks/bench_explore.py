"""Latency of the explorer's two interactive steps, through Flask's test client (the same
handlers as over HTTP, without the socket); prints medians. Never run by the test suite.

    python benchmarks/bench_explore.py [--repeats 15]

"choose an image": the prediction (one recorded forward pass) and every layer's feature-map
PNG, one request after the other (a browser asks for the PNGs in parallel). "click a unit":
the unit's receptive field (JSON) and its input-gradient PNG (a forward and a backward pass),
for a unit of the middle layer shown. Each image is new to the session, as when a learner
clicks through the grid. Models: SimpleCNN (target < 100 ms) and ResNet-20 for 28x28 images
(target < 300 ms), untrained: the time does not depend on the weights.
"""

import argparse
import time

import numpy as np

import cnnumpy as cn
from cnnumpy.data import ImageDataset
from cnnumpy.explore import Explorer, create_app

MODELS = {
    "SimpleCNN": (lambda: cn.SimpleCNN((1, 28, 28), 10, rng=np.random.default_rng(0)), 0.100),
    "ResNet-20": (lambda: cn.models.resnet20(input_shape=(1, 28, 28), num_classes=10,
                                            rng=np.random.default_rng(0)), 0.300),
}


def milliseconds(requests) -> float:
    start = time.perf_counter()
    for answer in requests():
        assert answer.status_code == 200, answer.data
    return (time.perf_counter() - start) * 1000


def measure(build_model, repeats: int) -> tuple[float, float, int]:
    """Median milliseconds of choosing an image and of clicking a unit, and the layers shown."""
    rng = np.random.default_rng(0)
    test = ImageDataset(rng.integers(0, 256, (repeats + 1, 1, 28, 28), dtype=np.uint8),
                        rng.integers(0, 10, repeats + 1), tuple("0123456789"), "random")
    explorer = Explorer(build_model, (np.float32([0.3]), np.float32([0.3])), test)
    client = create_app(explorer).test_client()
    layers = list(explorer.layers)
    middle = explorer.layers[layers[len(layers) // 2]]
    unit = f"layer={middle.name}&channel=1&row={middle.shape[1] // 2}&column={middle.shape[2] // 2}"

    def choose(image):
        return lambda: [client.get(f"/api/images/{image}")] + [
            client.get(f"/api/images/{image}/maps.png?layer={name}") for name in layers]

    def click(image):
        return lambda: [client.get(f"/api/images/{image}/unit?{unit}"),
                        client.get(f"/api/images/{image}/unit.png?{unit}")]

    milliseconds(choose("test-0")), milliseconds(click("test-0"))   # warm up
    chosen, clicked = [], []
    for index in range(1, repeats + 1):
        chosen.append(milliseconds(choose(f"test-{index}")))
        clicked.append(milliseconds(click(f"test-{index}")))
    return float(np.median(chosen)), float(np.median(clicked)), len(layers)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="images per model (default 15)")
    args = parser.parse_args()
    print(f"{'model':<10} {'layers':>6} {'choose an image':>16} {'click a unit':>13} {'target':>7}")
    for name, (build_model, target) in MODELS.items():
        chosen, clicked, layers = measure(build_model, args.repeats)
        print(f"{name:<10} {layers:>6} {chosen:>13.1f} ms {clicked:>10.1f} ms "
              f"{target * 1000:>4.0f} ms")


if __name__ == "__main__":
    main()
