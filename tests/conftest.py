import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py

try:  # Hypothesis keeps its examples and caches outside the source tree
    from hypothesis.configuration import set_hypothesis_home_dir
except ImportError:
    pass
else:
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "cnnumpy-hypothesis")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(params=["fused", "numpy"])
def batchnorm_way(request, monkeypatch):
    """BatchNorm's training kernels both ways: the fused loops (Numba, the `fast` extra) and
    the NumPy passes."""
    from cnnumpy.functional import fused

    if request.param == "fused" and not fused.available:
        pytest.skip("Numba (the `fast` extra) is not installed")
    monkeypatch.setattr(fused, "enabled", request.param == "fused")
    return request.param


@pytest.fixture(scope="session")
def explore_run(tmp_path_factory):
    """A run of `cnnumpy train` (SimpleCNN, one epoch on 64 images) on a tiny data set in the
    Fashion-MNIST format whose brightness tells the class (40 test images): the folder holds
    data/fashion-mnist and run/ (best.npz, metrics.jsonl)."""
    from cnnumpy.cli import main
    from cnnumpy.data.idx import write_idx_split

    root = tmp_path_factory.mktemp("explore")
    rng = np.random.default_rng(0)
    for split, count in (("train", 64), ("test", 40)):
        labels = rng.integers(0, 10, count)
        images = (rng.integers(0, 30, (count, 28, 28)) + labels[:, None, None] * 22)
        write_idx_split(root / "data" / "fashion-mnist", split, images.astype(np.uint8), labels)
    assert main(["train", "--dataset", "fashion-mnist", "--data-dir", str(root / "data"),
                 "--epochs", "1", "--batch-size", "16", "--out", str(root / "run"),
                 "--no-progress"]) == 0
    return root
