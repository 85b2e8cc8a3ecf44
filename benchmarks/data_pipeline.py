"""Time the data pipeline on real Fashion-MNIST: load, statistics, normalisation, and one
epoch of augmented batches. Prints a table; never run by the test suite.

    python benchmarks/data_pipeline.py [--data-dir DIR] [--dataset fashion-mnist] [--batch-size 128]
"""

import argparse
import time

import numpy as np

from cnnumpy.data import (channel_stats, iterate_batches, load_dataset, normalize,
                          random_crop, random_hflip)


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def augmented_epoch(dataset, mean, std, batch_size, rng):
    for idx in iterate_batches(dataset, batch_size, rng):
        batch = random_hflip(random_crop(dataset.images[idx], 2, rng), rng)
        normalize(batch, mean, std)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    train, load_s = timed(load_dataset, args.dataset, "train", data_dir=args.data_dir)
    (mean, std), stats_s = timed(channel_stats, train.images)
    _, normalize_s = timed(normalize, train.images, mean, std)
    _, epoch_s = timed(augmented_epoch, train, mean, std, args.batch_size, rng)
    print(f"{args.dataset}: {len(train)} images of {train.sample_shape}, "
          f"mean {np.round(mean, 4)}, std {np.round(std, 4)}")
    for step, seconds in (("load_dataset (train)", load_s), ("channel_stats", stats_s),
                          ("normalize (whole set)", normalize_s),
                          (f"epoch of crop+flip+normalize, batch {args.batch_size}", epoch_s)):
        print(f"{step:<45} {seconds:8.3f} s")


if __name__ == "__main__":
    main()
