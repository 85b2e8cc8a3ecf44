"""Fuzz-style tests: generated bad inputs of every kind, through the API and the command line.

The property is the same for every class: a bad input raises ValueError, TypeError or
FileNotFoundError whose message names the file, field or argument, and an input that is
accepted is usable (a loaded checkpoint evaluates to finite numbers and resumes; an image
becomes uint8 pixels of the model's shape). Nothing hangs (hypothesis' deadline), nothing
else escapes. The generators of `corruptions.py` make the files;
`benchmarks/fuzz_inputs.py` measures the same classes with more cases.
"""

import gzip
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnnumpy as cn
from cnnumpy.cli import build_parser, main
from cnnumpy.data import ImageDataset, idx
from cnnumpy.data.images import load_images
from corruptions import leaf_paths, read_npz, set_path, write_npz

CLEAR = (ValueError, TypeError, FileNotFoundError)
FUZZ = settings(max_examples=40, deadline=2000, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

json_values = st.one_of(st.none(), st.booleans(), st.integers(-2, 10**13),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
                        st.lists(st.integers(-1, 4), max_size=3),
                        st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


def toy_data(count=32, size=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, count)
    images = (rng.integers(0, 60, (count, 1, size, size)) + labels[:, None, None, None] * 90)
    return ImageDataset(images.astype(np.uint8), labels.astype(np.int64),
                        tuple("abc"[:classes]), "toy")


def toy_fit(run_dir, resume=None, stop=None):
    model = cn.SimpleCNN((1, 8, 8), 3, rng=np.random.default_rng(1))
    opt = cn.Adam(model, lr=1e-3)
    return cn.fit(model, toy_data(), optimizer=opt, epochs=2, batch_size=8, run_dir=run_dir,
                  schedule=cn.OneCycle(1e-3, total_steps=8), rng=np.random.default_rng(0),
                  callbacks=[lambda info: info.step == stop], resume=resume, progress=False,
                  verbose=False, workers=1)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """(metadata, arrays) of a run stopped after step 5 (epoch 1 of 2, batch 1 of 4)."""
    folder = tmp_path_factory.mktemp("fuzz")
    toy_fit(folder / "run", stop=5)
    return read_npz(folder / "run" / "last.npz")


# --------------------------------------------------------------------------- checkpoints


@FUZZ
@given(data=st.data())
def test_edited_checkpoint_metadata_is_refused_or_usable(tmp_path, stopped, data):
    metadata, arrays = stopped
    field = data.draw(st.sampled_from(leaf_paths(metadata)), label="field")
    value = data.draw(json_values, label="value")
    path = write_npz(tmp_path / "edited.npz", set_path(metadata, field, value), arrays)
    try:
        checkpoint = cn.load_checkpoint(path)
    except ValueError as err:
        assert str(path) in str(err)
        return
    model = checkpoint.build_model()  # accepted: it must evaluate and resume
    metrics = cn.evaluate(model, toy_data(seed=1), (checkpoint.arrays["normalization/mean"],
                                                   checkpoint.arrays["normalization/std"]))
    assert math.isfinite(metrics["loss"])
    try:  # a checkpoint true to itself may still disagree with the run resuming it
        history = toy_fit(tmp_path / "resumed", resume=checkpoint)
    except ValueError as err:
        assert str(path) in str(err) and "this run has" in str(err)
        return
    assert history.status == "completed"


@FUZZ
@given(data=st.data())
def test_damaged_checkpoint_bytes_are_refused_naming_the_file(tmp_path, stopped, data):
    metadata, arrays = stopped
    content = bytearray(write_npz(tmp_path / "good.npz", metadata, arrays).read_bytes())
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        at = data.draw(st.integers(0, len(content) - 1), label="at")
        content[at] = data.draw(st.integers(0, 255).filter(lambda b: b != content[at]))
    cut = data.draw(st.integers(0, len(content)), label="cut")
    path = tmp_path / "damaged.npz"
    path.write_bytes(bytes(content[:cut]))
    try:
        checkpoint = cn.load_checkpoint(path)
    except ValueError as err:
        assert str(path) in str(err)
        return
    for array in checkpoint.parameters.values():   # a harmless change (e.g. a zip comment)
        assert np.isfinite(array).all()


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # the overflow
def test_json_output_is_valid_when_the_loss_overflows(tmp_path, capsys):
    """Finite weights so large that the logits overflow: the loss is NaN, the JSON is valid."""
    folder = tmp_path / "data" / "fashion-mnist"
    rng = np.random.default_rng(0)
    idx.write_idx_split(folder, "test", rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
                        np.arange(4))
    model = cn.SimpleCNN((1, 28, 28), 10, rng=rng)
    model.parameters()["fc2.W"][...] = 3e38
    cn.save_checkpoint(tmp_path / "big.npz", model, metadata={"dataset": "fashion-mnist"},
                       arrays={"normalization/mean": np.float32([0.5]),
                               "normalization/std": np.float32([0.2])})
    np.save(tmp_path / "x.npy", np.full((28, 28), 200, np.uint8))
    assert main(["evaluate", str(tmp_path / "big.npz"), "--data-dir",
                 str(tmp_path / "data"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out, parse_constant=pytest.fail)
    assert printed["loss"] is None or math.isfinite(printed["loss"])
    assert main(["predict", str(tmp_path / "big.npz"), str(tmp_path / "x.npy"), "--json"]) == 0
    json.loads(capsys.readouterr().out, parse_constant=pytest.fail)


# --------------------------------------------------------------------------- IDX files


@FUZZ
@given(dims=st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 30), min_size=0, max_size=4),
       data=st.binary(max_size=200), type_code=st.sampled_from([8, 8, 8, 9, 12]),
       gz=st.booleans())
def test_idx_files_with_any_header_are_read_or_refused(tmp_path, dims, data, type_code, gz):
    content = bytes([0, 0, type_code, len(dims)]) + b"".join(
        d.to_bytes(4, "big") for d in dims) + data
    path = tmp_path / ("images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(content) if gz else content)
    try:
        images = idx.read_idx_images(path)
    except ValueError as err:
        assert str(path) in str(err)
        return
    assert images.dtype == np.uint8 and images.shape == (dims[0], 1, dims[1], dims[2])
    assert images.size > 0


def test_a_gzip_bomb_is_stopped_at_the_declared_size(tmp_path):
    from corruptions import gzip_bomb

    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip_bomb((2, 28, 28), inflated=64 << 20))
    # 64 MiB inflated: the reader stops 64 KiB past the declared 1568 bytes
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz: has extra bytes after "
                                         r"the data: .* = 1568 data bytes, the file has more "
                                         r"than 67104"):
        idx.read_idx_images(path)


def test_a_data_set_of_the_wrong_size_is_refused_before_training(tmp_path, capsys):
    folder = tmp_path / "fashion-mnist"
    rng = np.random.default_rng(0)
    idx.write_idx_split(folder, "train", rng.integers(0, 256, (8, 28, 28), dtype=np.uint8),
                        np.arange(8))
    idx.write_idx_split(folder, "test", rng.integers(0, 256, (4, 20, 20), dtype=np.uint8),
                        np.arange(4))
    assert main(["train", "--data-dir", str(tmp_path), "--epochs", "1", "--out",
                 str(tmp_path / "run"), "--no-progress"]) == 1
    error = capsys.readouterr().err
    assert "t10k-images-idx3-ubyte.gz: Fashion-MNIST images are 28x28" in error
    assert not (tmp_path / "run").exists()  # found before any training


# --------------------------------------------------------------------------- images


pixel_dtypes = st.sampled_from([np.uint8, np.float32, np.float64, np.int64, np.bool_,
                                np.complex64, np.uint16])


@FUZZ
@given(shape=st.lists(st.integers(0, 6), min_size=0, max_size=5), dtype=pixel_dtypes,
       scale=st.sampled_from([1.0, 255.0, np.nan]))
def test_npy_images_are_read_or_refused(tmp_path, shape, dtype, scale):
    values = np.random.default_rng(0).random(shape) * scale
    path = tmp_path / "input.npy"
    with np.errstate(invalid="ignore"):  # NaN cast to integers: whatever comes out
        np.save(path, values.astype(dtype) if dtype is not np.bool_ else values > 0.5)
    try:
        labels, batch = load_images([path], (1, 8, 8))
    except ValueError as err:
        assert str(path) in str(err) and "allow_pickle" not in str(err)
        return
    assert batch.dtype == np.uint8 and batch.shape[1:] == (1, 8, 8) and len(labels) == len(batch)


@FUZZ
@given(content=st.binary(max_size=300), suffix=st.sampled_from([".png", ".jpg", ".npy"]))
def test_any_bytes_as_an_image_are_refused_naming_the_file(tmp_path, content, suffix):
    path = tmp_path / f"picture{suffix}"
    path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        load_images([path], (1, 8, 8))
    assert str(path) in str(error.value)


# --------------------------------------------------------------------------- command line


NUMBER_OPTIONS = {"--lr": (0, math.inf), "--momentum": (0, 1), "--weight-decay": (0, math.inf),
                  "--label-smoothing": (0, 1), "--val-split": (0, 1), "--seed": (0, 2**63),
                  "--epochs": (1, math.inf), "--batch-size": (1, math.inf)}


@FUZZ
@given(option=st.sampled_from(sorted(NUMBER_OPTIONS)),
       text=st.sampled_from(["inf", "-inf", "nan", "-1", "1e309", "0", "1", "0.5", "1.5", "",
                             " ", "abc", "1e-3", "-0"]) | st.text(max_size=5))
def test_numeric_options_parse_to_finite_values_in_range_or_are_usage_errors(option, text,
                                                                             capsys):
    try:
        args = build_parser().parse_args(["train", option, text])
    except SystemExit as exit_:
        assert exit_.code == 2 and f"argument {option}" in capsys.readouterr().err
        return
    value = getattr(args, option[2:].replace("-", "_"))
    low, high = NUMBER_OPTIONS[option]
    assert math.isfinite(value) and low <= value <= high


@pytest.mark.parametrize("argv, message", [
    (["train", "--out", ""], "argument --out: must name a file or folder"),
    (["summary", "--model", "simplecnn", "--input-shape", "3,100000,100000"],
     r"argument --input-shape: .*height must be an integer in \[1, 512\]"),
    (["summary", "--model", "simplecnn", "--num-classes", "1000000000000"],
     r"argument --num-classes: must be an integer in \[1, 100000\]"),
])
def test_absurd_command_line_values_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)


# --------------------------------------------------------------------------- API


HYPERPARAMETERS = [
    (lambda v: cn.SGD(cn.Linear(2, 2), lr=v), "lr"),
    (lambda v: cn.SGD(cn.Linear(2, 2), lr=0.1, momentum=v), "momentum"),
    (lambda v: cn.SGD(cn.Linear(2, 2), lr=0.1, weight_decay=v), "weight_decay"),
    (lambda v: cn.Adam(cn.Linear(2, 2), eps=v), "eps"),
    (lambda v: cn.Adam(cn.Linear(2, 2), betas=(0.9, v)), "betas"),
    (lambda v: cn.OneCycle(v, total_steps=10), "max_lr"),
    (lambda v: cn.OneCycle(0.1, total_steps=v), "total_steps"),
    (lambda v: cn.StepDecay(0.1, step_size=3, gamma=v), "gamma"),
    (lambda v: cn.WarmupCosine(0.1, total_steps=10, min_lr=v), "min_lr"),
]


@FUZZ
@given(case=st.sampled_from(HYPERPARAMETERS), value=json_values)
def test_hyperparameters_are_finite_or_refused_by_name(case, value):
    build, name = case
    try:
        made = build(value)
    except CLEAR as err:
        assert name in str(err)
        return
    numbers = [v for v in vars(made).values()
               if isinstance(v, float) or (isinstance(v, tuple) and v and isinstance(v[0], float))]
    assert all(math.isfinite(x) for v in numbers for x in (v if isinstance(v, tuple) else (v,)))


@FUZZ
@given(field=st.sampled_from(["name", "hyperparameters", "steps", "arrays"]), value=json_values)
def test_optimizer_state_is_refused_by_name_or_loaded(field, value):
    optimizer = cn.SGD(cn.Linear(2, 2, rng=np.random.default_rng(0)), lr=0.1, momentum=0.9)
    state = {**optimizer.state_dict(), field: value}
    try:
        optimizer.load_state_dict(state)
    except CLEAR as err:
        assert "optimizer" in str(err)
        return
    assert math.isfinite(optimizer.lr) and optimizer.steps >= 0


# --------------------------------------------------------------------------- through the CLI


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """A 28x28 Fashion-MNIST-format test split, a checkpoint for it, and an image."""
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    idx.write_idx_split(root / "data" / "fashion-mnist", "test",
                        rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), np.arange(6))
    model = cn.SimpleCNN((1, 28, 28), 10, rng=rng)
    cn.save_checkpoint(root / "ck.npz", model, metadata={"dataset": "fashion-mnist"},
                       arrays={"normalization/mean": np.float32([0.5]),
                               "normalization/std": np.float32([0.2])})
    np.save(root / "image.npy", np.full((28, 28), 100, np.uint8))
    return root


def one_line_error(capsys, name):
    error = capsys.readouterr().err
    assert error.startswith("cnnumpy: error: ") and error.count("\n") == 1, error
    assert name in error, error


@settings(FUZZ, max_examples=15)
@given(data=st.data())
def test_cli_damaged_checkpoint_image_and_data_files(tmp_path, cli_files, capsys, data):
    """One damaged file per example (checkpoint, image or IDX test split) through the CLI:
    exit status 1 and one line naming the file, or (for a harmless change) valid JSON."""
    kind = data.draw(st.sampled_from(["checkpoint", "image", "idx"]), label="kind")
    source = {"checkpoint": cli_files / "ck.npz", "image": cli_files / "image.npy",
              "idx": cli_files / "data" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"}[kind]
    content = bytearray(gzip.decompress(source.read_bytes()) if kind == "idx"
                        else source.read_bytes())
    at = data.draw(st.integers(0, len(content) - 1), label="at")
    content[at] = data.draw(st.integers(0, 255), label="byte")
    content = bytes(content[:data.draw(st.integers(0, len(content)), label="cut")])
    paths = {"checkpoint": cli_files / "ck.npz", "image": cli_files / "image.npy",
             "data": cli_files / "data"}
    if kind == "idx":
        folder = tmp_path / "data" / "fashion-mnist"
        idx_path = idx.write_idx_split(folder, "test", np.zeros((1, 28, 28), np.uint8),
                                       [0])["images"]
        idx_path.write_bytes(gzip.compress(content))
        paths["data"], damaged = tmp_path / "data", idx_path
    else:
        damaged = paths[kind] = tmp_path / source.name
        damaged.write_bytes(content)
    status = main(["evaluate" if kind == "idx" else "predict", str(paths["checkpoint"]),
                   *(["--data-dir", str(paths["data"])] if kind == "idx"
                     else [str(paths["image"])]), "--json"])
    if status == 0:
        json.loads(capsys.readouterr().out, parse_constant=pytest.fail)
    else:
        assert status == 1
        one_line_error(capsys, damaged.name)


@pytest.mark.parametrize("build", [
    lambda: cn.SimpleCNN((1, 100000, 100000), 10),
    lambda: cn.SimpleCNN((1, 28, 28), 10**12),
    lambda: cn.Linear(10**12, 10),
    lambda: cn.Conv2D(3, 10**6, 1000),
])
def test_absurd_layer_sizes_are_refused_before_allocating(build):
    with pytest.raises(ValueError, match=r"weights of shape \(.*\) would hold \d+ values, more "
                                         r"than the 134217728 a layer may have"):
        build()


def test_a_seed_is_not_a_generator():
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator .* got int"):
        cn.SimpleCNN((1, 8, 8), 3, rng=42)


def test_a_test_set_the_model_does_not_take_is_named(tmp_path, cli_files, capsys):
    from cnnumpy.data import cifar

    rng = np.random.default_rng(0)
    split = (rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8), np.arange(5))
    cifar.write_cifar10(tmp_path / "cifar10", split, split)
    assert main(["evaluate", str(cli_files / "ck.npz"), "--dataset", "cifar10", "--data-dir",
                 str(tmp_path)]) == 1
    one_line_error(capsys, "ck.npz takes [1, 28, 28] images into 10 classes, the cifar10 "
                           "test set has [3, 32, 32] images")
    with pytest.raises(TypeError, match="data_dir must be a path .* got int"):
        cn.data.load_dataset("mnist", data_dir=123)
