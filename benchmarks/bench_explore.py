"""Latency of the explorer's two interactive steps, through Flask's test client (the same
handlers as over HTTP, without the socket); prints medians. Never run by the test suite.

    python benchmarks/bench_explore.py [--repeats 15] [--test-images 20000]

"choose an image": the prediction (one recorded forward pass), then maps.png, every layer's
feature maps in one PNG (the page draws each layer's part of it); the page also asks for the
small input.png, and then the saliency, neither timed here. "click a unit": the unit's
receptive field (JSON) and its input-gradient PNG (a forward and a backward pass), for a unit
of the middle layer shown. Each image is new to the session, as when a learner clicks through
the grid. Models: SimpleCNN (target < 100 ms) and ResNet-20 (target < 300 ms)
for 1x28x28 images, ResNet-20 for 3x32x32 (CIFAR-10), untrained: the time does not depend on
the weights.

Each model is measured twice: "idle", and while the test set's predictions run (started, not
finished: the table gives how many of the --test-images were predicted at the end). Each step
starts QUIET_SECONDS + 0.2 s after the previous one, as a learner's clicks come, so the
predictions have resumed and a batch is running when the step begins; idle, the same pause
(a step after a pause takes longer than one right after another: caches and cores have gone
to other work meanwhile).
"""

import argparse
import time

import numpy as np

import cnnumpy as cn
from cnnumpy.data import ImageDataset
from cnnumpy.explore import QUIET_SECONDS, Explorer, create_app

MODELS = {
    "SimpleCNN 1x28x28": (lambda: cn.SimpleCNN((1, 28, 28), 10, rng=np.random.default_rng(0)),
                          (1, 28, 28), 0.100),
    "ResNet-20 1x28x28": (lambda: cn.models.resnet20(input_shape=(1, 28, 28), num_classes=10,
                                                     rng=np.random.default_rng(0)),
                          (1, 28, 28), 0.300),
    "ResNet-20 3x32x32": (lambda: cn.models.resnet20(input_shape=(3, 32, 32), num_classes=10,
                                                     rng=np.random.default_rng(0)),
                          (3, 32, 32), 0.300),
}


def milliseconds(requests) -> float:
    start = time.perf_counter()
    for answer in requests():
        assert answer.status_code == 200, answer.data
    return (time.perf_counter() - start) * 1000


def measure(build_model, input_shape, repeats: int, background: bool, test_images: int):
    """Median milliseconds of choosing an image and of clicking a unit, the layers shown and
    the test images predicted at the end (of how many)."""
    rng = np.random.default_rng(0)
    count = test_images if background else repeats + 1
    test = ImageDataset(rng.integers(0, 256, (count, *input_shape), dtype=np.uint8),
                        rng.integers(0, 10, count), tuple("0123456789"), "random")
    channels = input_shape[0]
    explorer = Explorer(build_model, (np.float32([0.3] * channels),
                                      np.float32([0.3] * channels)), test)
    client = create_app(explorer).test_client()
    layers = list(explorer.layers)
    middle = explorer.layers[layers[len(layers) // 2]]
    unit = f"layer={middle.name}&channel=1&row={middle.shape[1] // 2}&column={middle.shape[2] // 2}"

    def choose(image):
        return lambda: [client.get(f"/api/images/{image}"),
                        client.get(f"/api/images/{image}/maps.png")]

    def click(image):
        return lambda: [client.get(f"/api/images/{image}/unit?{unit}"),
                        client.get(f"/api/images/{image}/unit.png?{unit}")]

    milliseconds(choose("test-0")), milliseconds(click("test-0"))   # warm up
    if background:
        explorer.start()

    chosen, clicked = [], []
    for index in range(1, repeats + 1):
        time.sleep(QUIET_SECONDS + 0.2)
        chosen.append(milliseconds(choose(f"test-{index}")))
        time.sleep(QUIET_SECONDS + 0.2)
        clicked.append(milliseconds(click(f"test-{index}")))
    return float(np.median(chosen)), float(np.median(clicked)), len(layers), explorer.done, count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="images per model (default 15)")
    parser.add_argument("--test-images", type=int, default=20000,
                        help="the test set predicted in the background (default 20000)")
    args = parser.parse_args()
    print(f"{'model':<18} {'layers':>6} {'predictions':>24} {'choose an image':>16} "
          f"{'click a unit':>13} {'target':>7}")
    for name, (build_model, input_shape, target) in MODELS.items():
        for background in (False, True):
            chosen, clicked, layers, done, total = measure(build_model, input_shape,
                                                           args.repeats, background,
                                                           args.test_images)
            state = f"running, {done} of {total}" if background else "idle"
            if background and done == total:
                state = f"finished, {done}"          # not measured while they ran
            print(f"{name:<18} {layers:>6} {state:>24} {chosen:>13.1f} ms "
                  f"{clicked:>10.1f} ms {target * 1000:>4.0f} ms", flush=True)


if __name__ == "__main__":
    main()
