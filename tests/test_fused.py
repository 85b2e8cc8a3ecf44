"""BatchNorm's fused loops (`cnnumpy.functional.fused`, compiled by Numba) against the NumPy
passes and float64 sums: the same statistics, outputs and gradients, for any shape."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import cnnumpy as cn
from cnnumpy.functional import batchnorm_backward, batchnorm_forward, fused

pytestmark = pytest.mark.skipif(not fused.available,
                                reason="Numba (the `fast` extra) is not installed")

# (M, C) rows: loop rows of 256 values (255 for 5 channels) and rows left over, narrow and
# wide, one row, none
ROWS = [(65536 + 5, 16), (1001, 16), (1000, 5), (4099, 64), (7, 5), (3, 300), (1, 3), (0, 4)]


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (np.float32, 2e-6)])
@pytest.mark.parametrize("m, c", ROWS)
def test_kernels_compute_their_formulas(m, c, dtype, tolerance, rng):
    x = (rng.standard_normal((m, c)) * 2 + 3).astype(dtype)
    g = rng.standard_normal((m, c)).astype(dtype)
    centre, scale, shift, gain = (rng.standard_normal(c).astype(dtype) for _ in range(4))
    d, g64 = x.astype(np.float64) - centre, g.astype(np.float64)

    def close(got, expected, size):  # within tolerance of |expected| + size, elementwise
        assert np.all(abs(got - expected) <= tolerance * (abs(expected) + size))

    sums, squares = fused.shifted_sums(x, centre)
    assert sums.dtype == squares.dtype == np.float64
    close(sums, d.sum(axis=0), abs(d).sum(axis=0))
    close(squares, (d * d).sum(axis=0), 0)
    sums, products = fused.gradient_sums(g, x, centre)
    close(sums, g64.sum(axis=0), abs(g64).sum(axis=0))
    close(products, (g64 * d).sum(axis=0), abs(g64 * d).sum(axis=0))
    out = fused.affine(x, centre, scale, shift, np.empty_like(x))
    assert out.dtype == dtype
    close(out, d * scale + shift, abs(d * scale) + abs(shift))
    out = fused.gradient_input(g, x, centre, gain, scale, shift, np.empty_like(x))
    close(out, g64 * gain + d * scale + shift, abs(g64 * gain) + abs(d * scale) + abs(shift))


def test_only_contiguous_rows_of_one_float_dtype_are_fused(monkeypatch):
    x = np.zeros((6, 4), np.float32)
    assert fused.usable(x, x.copy())
    assert not fused.usable(x[:, ::2])  # strided
    assert not fused.usable(x, x.astype(np.float64))
    assert not fused.usable(x.astype(np.float16))
    monkeypatch.setattr(fused, "enabled", False)
    assert not fused.usable(x)


def _both_ways(x, dout, monkeypatch, **batchnorm):
    """batchnorm_forward and _backward's results with the fused loops and the NumPy passes."""
    results = {}
    for way in ("fused", "numpy"):
        monkeypatch.setattr(fused, "enabled", way == "fused")
        out, cache, mean, var = batchnorm_forward(x, **batchnorm)
        assert cache.fused == (way == "fused")
        results[way] = (out, mean, var, *batchnorm_backward(dout, cache))
    return results


@pytest.mark.parametrize("shape", [(6, 4, 5, 5), (3, 7, 9, 11), (8, 5), (4, 300), (2, 3, 1, 1)])
def test_fused_batchnorm_equals_the_numpy_passes(shape, monkeypatch, rng):
    """float64: outputs, batch statistics and every gradient to 1e-12."""
    x = rng.standard_normal(shape) * 3 + rng.standard_normal(shape[1]).reshape(
        (-1,) + (1,) * (len(shape) - 2)) * 5
    dout = rng.standard_normal(shape)
    c = shape[1]
    results = _both_ways(x, dout, monkeypatch, gamma=rng.standard_normal(c) + 1,
                         beta=rng.standard_normal(c), eps=1e-5)
    for name, got, expected in zip(("out", "mean", "var", "dx", "dgamma", "dbeta"),
                                   results["fused"], results["numpy"]):
        np.testing.assert_allclose(got, expected, rtol=1e-12,
                                   atol=1e-12 * max(1, abs(expected).max()), err_msg=name)


def test_fused_float32_keeps_its_digits_far_from_zero(monkeypatch, rng):
    """Values of 1e4 ± 0.01 in float32: the fused sums are about a value near the mean, so
    the variance is within 1e-5 of float64's (the NumPy passes centre on a float32 mean
    about 0.02 standard deviations off here: their variance is off by 3e-4), the outputs
    within 1e-4 and the gradients within 1e-4 of the largest (the mean, 1e4, is not a
    float32 number: what it is off by goes into the shift and the sums)."""
    x = (1e4 + 0.01 * rng.standard_normal((64, 4, 16, 16))).astype(np.float32)
    values = x.astype(np.float64)
    # a gradient that follows the values, so that dγ's share of dx is large
    dout = ((values - 1e4) * 50 + rng.standard_normal(x.shape)).astype(np.float32)
    var = values.var(axis=(0, 2, 3))
    gamma, beta = np.float32([1, 2, -1, 0.5]), np.float32([0, 1, 2, 3])
    results = _both_ways(x, dout, monkeypatch, gamma=gamma, beta=beta, eps=1e-5)
    expected = _both_ways(values, dout.astype(np.float64), monkeypatch, gamma=np.float64(gamma),
                          beta=np.float64(beta), eps=1e-5)["numpy"]
    out, _, fused_var, dx, dgamma, dbeta = results["fused"]
    assert abs(fused_var / var - 1).max() < 1e-5
    assert abs(fused_var / var - 1).max() <= abs(results["numpy"][2] / var - 1).max()
    for got, wanted in ((out, expected[0]), (dx, expected[3]), (dgamma, expected[4]),
                        (dbeta, expected[5])):
        assert abs(got - wanted).max() < 1e-4 * abs(wanted).max()


def test_a_training_batchnorm_without_a_cache_holds_no_copy(monkeypatch, rng):
    monkeypatch.setattr(fused, "enabled", True)
    layer = cn.BatchNorm2D(3, dtype=np.float64)
    monkeypatch.setattr(layer, "_held", lambda *args, **kwargs: pytest.fail("copied"))
    layer.forward(rng.standard_normal((4, 3, 5, 5)), keep_cache=False)
    assert layer.num_batches_tracked == 1 and layer.cache is None


def test_eval_mode_is_one_fused_pass_equal_to_the_numpy_passes(monkeypatch, rng):
    x = rng.standard_normal((5, 3, 7, 6)) * 4 + 2
    running_mean, running_var = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    outputs, calls = [], []
    affine = fused.affine
    monkeypatch.setattr(fused, "affine", lambda *args: calls.append(1) or affine(*args))
    for way in ("fused", "numpy"):
        monkeypatch.setattr(fused, "enabled", way == "fused")
        outputs.append(cn.functional.batchnorm_infer(x, gamma, beta, running_mean, running_var,
                                                     1e-5))
    expected = (x - running_mean.reshape(3, 1, 1)) * (
        gamma / np.sqrt(running_var + 1e-5)).reshape(3, 1, 1) + beta.reshape(3, 1, 1)
    for out in outputs:
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    assert len(calls) == 1  # the fused way's one pass


def test_a_layer_holds_a_copy_of_its_input_and_a_model_the_array_it_made(monkeypatch, rng):
    """The fused cache is x's rows: a BatchNorm called directly keeps a copy of the caller's
    array (also of channels-last memory, whose rows are a view); inside a model, the array
    the convolution before it made, as it is."""
    monkeypatch.setattr(fused, "enabled", True)
    monkeypatch.setattr(cn.workspace, "MIN_BYTES", 0)
    x = cn.functional.to_nchw(rng.standard_normal((4, 6, 6, 3)))
    layer = cn.BatchNorm2D(3, dtype=np.float64)
    layer.forward(x)
    assert not np.shares_memory(layer.cache[2].values, x)
    conv = cn.Conv2D(3, 3, 3, padding=1, rng=rng, dtype=np.float64, bias=False)
    model = cn.Sequential([conv, cn.BatchNorm2D(3, dtype=np.float64)])
    made = []
    forward = conv.forward
    conv.forward = lambda x, keep_cache=True: made.append(forward(x, keep_cache)) or made[-1]
    model.forward(x)
    assert np.shares_memory(model[1].cache[2].values, made[0])


def test_numba_is_imported_at_the_first_fused_call_or_by_prepare():
    """Importing cnnumpy (and a model's forward without BatchNorm) leaves Numba alone;
    `prepare` imports it and compiles, or loads, every loop for the dtype."""
    script = """
import sys, numpy as np, cnnumpy as cn
from cnnumpy.functional import fused
cn.SimpleCNN(input_shape=(1, 8, 8), num_classes=2).forward(np.zeros((1, 1, 8, 8), np.float32))
print("numba" in sys.modules)
fused.prepare(np.float32)
print("numba" in sys.modules)
for loop in (fused._two_sums, fused._affine):
    (types,) = loop.compiled.signatures  # one version, of float32 arrays
    print(all(t.dtype.name == "float32" for t in types if hasattr(t, "dtype")))
"""
    lines = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert lines == ["False", "True", "True", "True"]


def _split_forward_backward(parts, dout_parts, **batchnorm):
    """batchnorm_forward and _backward of each part on a thread of its own, the parts meeting
    through `total_sum` as a split batch's do: [(out, mean, var, dx, dgamma, dbeta)]. An error
    in a part ends every part's wait and is raised here."""
    arrays, results, errors = [], [None] * len(parts), []
    barrier = threading.Barrier(len(parts), timeout=60)

    def total_sum(index, array):
        arrays.append((index, array))
        barrier.wait()
        total = sum(a for _, a in sorted(arrays, key=lambda pair: pair[0]))
        barrier.wait()
        if index == 0:
            arrays.clear()
        barrier.wait()
        return total

    def run(index):
        try:
            meet = lambda array: total_sum(index, array)
            out, cache, mean, var = batchnorm_forward(parts[index], total_sum=meet, **batchnorm)
            assert cache.fused == fused.enabled
            results[index] = (out, mean, var, *batchnorm_backward(dout_parts[index], cache, meet))
        except BaseException as error:  # noqa: BLE001 - raised again below
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(parts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("dtype, centre, tolerance", [
    (np.float64, 0.0, 1e-12), (np.float32, 0.0, 2e-5), (np.float32, 1e4, 1e-4)])
# tolerance: of the largest output and gradient; the statistics within a step of the dtype
def test_a_split_with_an_empty_part_equals_the_whole_batch(dtype, centre, tolerance,
                                                           batchnorm_way, rng):
    """Parts of 3, 0 (an MPI rank without samples) and 2 images, their means 5 standard
    deviations apart: outputs, statistics and gradients as the whole batch's in float64,
    within `tolerance` of the largest value (1e4 ± 0.01 in float32: the parts meet twice)."""
    std = 0.01 if centre else 1.0
    x = centre + std * rng.standard_normal((5, 3, 4, 4))
    x[:3] += 5 * std
    dout = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / std + rng.standard_normal(x.shape)
    x, dout = (a.astype(dtype).astype(np.float64) for a in (x, dout))  # dtype's values
    gamma, beta = np.array([1.0, -2.0, 0.5]), np.array([0.0, 1.0, -1.0])
    bounds = [0, 3, 3, 5]
    parts = [x[a:b].astype(dtype) for a, b in zip(bounds, bounds[1:])]
    douts = [dout[a:b].astype(dtype) for a, b in zip(bounds, bounds[1:])]
    split = _split_forward_backward(parts, douts, gamma=gamma.astype(dtype),
                                    beta=beta.astype(dtype), eps=1e-5)
    out, cache, mean, var = batchnorm_forward(x, gamma, beta, 1e-5)
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)
    close = lambda got, expected: np.testing.assert_allclose(
        got, expected, rtol=0, atol=tolerance * abs(expected).max())
    for name, index, expected in (("out", 0, out), ("dx", 3, dx)):
        close(np.concatenate([part[index] for part in split]), expected)
    step = np.finfo(dtype).eps
    for part in split:  # every part has the batch's statistics
        np.testing.assert_allclose(part[1], mean, rtol=4 * step, atol=4 * step * std)
        np.testing.assert_allclose(part[2], var, rtol=50 * step)
    for index, expected in ((4, dgamma), (5, dbeta)):  # each part's share of the sums
        close(sum(part[index].astype(np.float64) for part in split), expected)


def test_a_numba_that_does_not_import_leaves_the_numpy_passes_with_a_warning(tmp_path):
    """Installed but broken (here a stand-in that raises on import, as a Numba built for
    another NumPy does): the first BatchNorm step warns once and trains in NumPy."""
    (tmp_path / "numba").mkdir()
    (tmp_path / "numba" / "__init__.py").write_text("raise ImportError('built for NumPy 1')\n")
    script = """
import warnings, numpy as np, cnnumpy as cn
from cnnumpy.functional import fused
layer = cn.BatchNorm2D(3)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(2):
        out = layer.forward(np.random.rand(4, 3, 5, 5).astype(np.float32))
        layer.backward(np.ones_like(out))
print(fused.available, fused.enabled, layer.cache[2].fused, len(caught))
print(caught[0].message)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    lines = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True, env=env).stdout.splitlines()
    assert lines[0] == "True False False 1"
    assert "Numba is installed but does not import (built for NumPy 1)" in lines[1]
