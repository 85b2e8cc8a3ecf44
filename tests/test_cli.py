"""The `cnnumpy` command through subprocesses, on a tiny Fashion-MNIST-format data set."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import cnnumpy as cn
from cnnumpy.cli import main
from cnnumpy.data import load_dataset
from cnnumpy.data.idx import write_idx_split


def cnnumpy(*args, cwd, check=True):
    result = subprocess.run([sys.executable, "-m", "cnnumpy", *map(str, args)], cwd=cwd,
                            capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}: {result.stderr}")
    return result


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Official-format IDX files (gzipped) of 28x28 images (the size of Fashion-MNIST) whose brightness tells the class."""
    folder = tmp_path_factory.mktemp("data") / "fashion-mnist"
    rng = np.random.default_rng(0)
    for split, count in (("train", 96), ("test", 40)):
        labels = rng.integers(0, 10, count)
        images = (rng.integers(0, 30, (count, 28, 28)) + labels[:, None, None] * 22).astype(np.uint8)
        write_idx_split(folder, split, images, labels)
    return folder.parent


def train_args(data_dir, out, epochs=2):
    return ["train", "--dataset", "fashion-mnist", "--data-dir", data_dir, "--limit", 64,
            "--epochs", epochs, "--batch-size", 32, "--out", out, "--no-progress"]


def test_the_resnet_recipe_erases_only_with_its_augmentation():
    """The CIFAR ResNets' recipe adds random erasing to crop and flip: --no-augment turns both
    off (the recipe's erasing is part of its augmentation); --random-erasing given with
    --no-augment is a mistake; another model erases only when asked."""
    from cnnumpy.cli import _train_settings, build_parser

    def settings(*args):
        return _train_settings(build_parser().parse_args(["train", *args]))

    assert settings("--model", "resnet20")["random_erasing"] == 0.5
    assert settings("--model", "resnet56", "--random-erasing", "0.2")["random_erasing"] == 0.2
    plain = settings("--model", "resnet20", "--no-augment")
    assert (plain["augment"], plain["random_erasing"]) == (False, 0.0)
    assert settings("--model", "resnet18")["random_erasing"] == 0.0
    with pytest.raises(ValueError, match="--random-erasing is an augmentation"):
        settings("--model", "resnet20", "--no-augment", "--random-erasing", "0.5")


def test_a_zoo_model_trains_and_its_checkpoint_is_summarised_and_plotted(data_dir, tmp_path):
    """`cnnumpy train --model resnet20` with its recipe on 17 images in batches of 8 (the
    last of one image: BatchNorm's maps are at least 7x7, so it trains), then the branched
    model's checkpoint through `summary` and `plot features`."""
    result = cnnumpy("train", "--model", "resnet20", "--data-dir", data_dir, "--limit", 17,
                     "--epochs", 1, "--batch-size", 8, "--out", "run", "--no-progress",
                     cwd=tmp_path)
    assert "test accuracy" in result.stdout
    checkpoint = cn.load_checkpoint(tmp_path / "run" / "last.npz")
    settings = checkpoint.metadata["train_settings"]
    assert (settings["lr"], settings["label_smoothing"], settings["random_erasing"],
            settings["epochs"]) == (0.1, 0.1, 0.5, 1)
    assert "input_padding" not in settings and checkpoint.metadata["progress"]["step"] == 3
    assert checkpoint.build_model().config()["depth"] == 20
    rows = {line.split()[0]: line.split() for line in
            cnnumpy("summary", "run/last.npz", cwd=tmp_path).stdout.splitlines()[4:-4]}
    assert rows["layer2.0"][1:5] + rows["layer2.0"][-2:] == \
        ["Residual", "(32,", "14,", "14)", "21", "2"]  # through its stride-2 convolutions
    cnnumpy("plot", "features", "run/last.npz", "test:0", "--data-dir", data_dir, "--out",
            "maps.png", cwd=tmp_path)
    from PIL import Image
    with Image.open(tmp_path / "maps.png") as png:
        assert png.size == (1000, 600) and np.asarray(png.convert("L")).std() > 0


def test_input_padding_brings_images_up_to_the_models_smallest_size():
    from cnnumpy.cli import input_padding, with_input_padding
    settings = {"model": "vgg11_bn", "lr": 0.05}
    assert with_input_padding(settings, (1, 28, 28)) == {**settings, "input_padding": 2}
    assert with_input_padding(settings, (3, 32, 32)) == settings  # none stored when 0
    assert with_input_padding({"model": "resnet20"}, (1, 28, 28)) == {"model": "resnet20"}
    assert [input_padding(model, (1, 28, 28)) for model in ("vgg11_bn", "alexnet", "resnet20",
                                                           "simplecnn")] == [2, 18, 0, 0]
    assert [input_padding(model, (3, 32, 32)) for model in ("vgg19", "alexnet")] == [0, 16]
    assert input_padding("alexnet", (3, 100, 20)) == 22  # the smaller side decides
    from cnnumpy.init import ZeroDraws

    def build(model, shape, padding):
        return cn.build_model({"name": model, "input_shape": list(shape), "num_classes": 3,
                               "input_padding": padding}, rng=ZeroDraws())
    for model in ("vgg13", "alexnet"):
        for shape in ((1, 28, 28), (3, 32, 32), (3, 100, 20)):
            padding = input_padding(model, shape)
            assert build(model, shape, padding).output_shape(shape) == (3,)
            if padding:  # the least that fits
                with pytest.raises(ValueError, match="needs images of at least"):
                    build(model, shape, padding - 1)


def test_train_evaluate_predict(data_dir, tmp_path):
    result = cnnumpy(*train_args(data_dir, "run"), "--val-split", "0.25", "--init", "uniform",
                     cwd=tmp_path)
    assert "test accuracy" in result.stdout
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert "val_acc" in json.loads(lines[0])
    checkpoint = cn.load_checkpoint(tmp_path / "run" / "best.npz")
    assert checkpoint.metadata["train_settings"]["limit"] == 64
    assert checkpoint.metadata["train_settings"]["init"] == "uniform"
    assert checkpoint.metadata["class_names"][9] == "Ankle boot"

    metrics = json.loads(cnnumpy("evaluate", "run/last.npz", "--json", cwd=tmp_path).stdout)
    last = cn.load_checkpoint(tmp_path / "run" / "last.npz")
    expected = cn.evaluate(last.build_model(), load_dataset("fashion-mnist", "test",
                                                            data_dir=data_dir),
                           (last.arrays["normalization/mean"], last.arrays["normalization/std"]))
    assert metrics["count"] == expected["count"] == 40
    assert metrics["accuracy"] == expected["accuracy"]
    assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-6)

    rng = np.random.default_rng(1)
    np.save(tmp_path / "image.npy", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    from PIL import Image
    Image.fromarray(rng.integers(0, 255, (20, 16, 3), dtype=np.uint8)).save(tmp_path / "pic.png")
    result = cnnumpy("predict", "run/last.npz", "image.npy", "pic.png", "--top-k", 2,
                     cwd=tmp_path)
    first, second = result.stdout.splitlines()
    assert first.startswith("image.npy: ") and second.startswith("pic.png: ")
    assert first.count(",") == 1  # two classes
    parsed = json.loads(cnnumpy("predict", "run/last.npz", "image.npy", "--json",
                                cwd=tmp_path).stdout)
    probabilities = [entry["probability"] for entry in parsed[0]["top"]]
    assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)

    again = cnnumpy(*train_args(data_dir, "run"), cwd=tmp_path, check=False)
    assert again.returncode == 1 and "already holds a run" in again.stderr
    finished = cnnumpy("train", "--resume", "run", cwd=tmp_path, check=False)
    assert finished.returncode == 1 and "already finished its 2 epochs" in finished.stderr


def test_split_over_processes_or_threads_trains_the_same_weights(data_dir, tmp_path):
    cnnumpy(*train_args(data_dir, "threads", epochs=1), "--split", "threads", cwd=tmp_path)
    cnnumpy(*train_args(data_dir, "default", epochs=1), cwd=tmp_path)  # processes on Linux
    threads = cn.load_checkpoint(tmp_path / "threads" / "last.npz").parameters
    default = cn.load_checkpoint(tmp_path / "default" / "last.npz").parameters
    assert "conv1.W" in threads and threads.keys() == default.keys()
    for name, value in threads.items():
        np.testing.assert_array_equal(default[name], value, err_msg=name)


def test_errors_are_one_line(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 nothing")
    for args in (["evaluate", "missing.npz"], ["evaluate", "broken.npz"],
                 ["predict", "broken.npz", "x.png"],
                 ["train", "--optimizer", "adam", "--momentum", "0.5"],
                 ["train", "--resume", "r", "--lr", "0.1"],
                 ["train", "--no-augment", "--random-erasing", "0.5"]):
        assert main(args) == 1, args
        stderr = capsys.readouterr().err
        assert stderr.startswith("cnnumpy: error: "), stderr
        assert len(stderr.strip().splitlines()) == 1, stderr
    assert main(["train", "--data-dir", str(tmp_path / "nowhere"), "--dataset", "mnist",
                 "--out", "r", "--no-progress"]) == 1
    assert "--data-dir" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()
    (tmp_path / "notes.txt").write_text("kept")
    assert main(["train", "--out", "notes.txt", "--no-progress"]) == 1
    assert "--out notes.txt is a file" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "kept"
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data-dir", str(tmp_path / "empty"), "--dataset", "mnist",
                 "--out", "r", "--no-progress"]) == 1
    first_line, *details = capsys.readouterr().err.splitlines()  # then which files go where
    assert first_line.startswith("cnnumpy: error: MNIST (train) not found")
    assert any("train-images-idx3-ubyte.gz" in line for line in details)
    with pytest.raises(SystemExit) as usage:
        main(["train", "--epochs", "0"])
    assert usage.value.code == 2 and "must be an integer >= 1" in capsys.readouterr().err
    debug = cnnumpy("evaluate", "broken.npz", "--debug", cwd=tmp_path, check=False)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    plain = cnnumpy("evaluate", "broken.npz", cwd=tmp_path, check=False)
    assert plain.returncode == 1 and plain.stderr.count("\n") == 1


def test_sigint_then_resume_matches_a_straight_run(data_dir, tmp_path):
    epochs = 16  # long enough to be still running when the signal comes after epoch 1
    cnnumpy(*train_args(data_dir, "straight", epochs), cwd=tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "cnnumpy", *map(str, train_args(data_dir, "stopped", epochs))],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "stopped" / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not (metrics.exists() and metrics.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT, stderr
    assert "received SIGINT" in stderr and "cnnumpy train --resume stopped" in stderr
    stopped_at = cn.load_checkpoint(tmp_path / "stopped" / "last.npz").metadata["progress"]
    assert stopped_at["epoch"] < epochs

    cnnumpy("train", "--resume", "stopped", "--no-progress", cwd=tmp_path)
    straight = cn.load_checkpoint(tmp_path / "straight" / "last.npz")
    resumed = cn.load_checkpoint(tmp_path / "stopped" / "last.npz")
    assert resumed.metadata["progress"]["epoch"] == epochs
    for name, value in straight.parameters.items():
        assert np.array_equal(resumed.parameters[name], value), name


def test_random_erasing_is_stored_and_checked_on_both_sides(data_dir, tmp_path):
    """`--random-erasing` goes into the run's settings and the fit's; a checkpoint edited so
    that they disagree (or that lacks one of them) is refused with a message naming both."""
    from corruptions import read_npz, write_npz

    args = train_args(data_dir, tmp_path / "run", epochs=1) + ["--random-erasing", "0.5"]
    assert main([str(arg) for arg in args]) == 0
    metadata, arrays = read_npz(tmp_path / "run" / "last.npz")
    assert metadata["train_settings"]["random_erasing"] == metadata["fit"]["random_erasing"] == 0.5
    for where in ("fit", "train_settings"):
        edited = json.loads(json.dumps(metadata))
        del edited[where]["random_erasing"]  # as a run saved before the option: 0
        with pytest.raises(ValueError, match=r"train_settings.random_erasing is 0.[05] but "
                                             r"fit.random_erasing is 0.[05]"):
            cn.load_checkpoint(write_npz(tmp_path / "edited.npz", edited, arrays))


def test_every_stored_setting_has_a_check_in_the_checkpoint_schema():
    """A new option of `cnnumpy train` must say, in the checkpoint schema, what it allows:
    a resumed run takes its settings from the (untrusted) checkpoint."""
    from cnnumpy.checkpoint import TRAIN_SETTINGS_FIELDS
    from cnnumpy.cli import MODEL_RECIPES, RECIPE

    per_model = {key for recipe in MODEL_RECIPES.values() for key in recipe}
    by_data = {"input_padding"}  # set from the images' size (cli.input_padding)
    assert set(TRAIN_SETTINGS_FIELDS) == set(RECIPE) | per_model | by_data
