"""The fit loop: learning, metrics and checkpoints, exact resumption, divergence, real data."""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

import cnnumpy as cn
from cnnumpy.data import ImageDataset, load_dataset
from cnnumpy import part_processes
from cnnumpy.part_processes import fork_available
from cnnumpy.train import BEST_FILE, LAST_FILE, METRICS_FILE

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def toy_data(rng, count=96, size=8, classes=3):
    """Images whose brightness band tells the class (learnable in a few steps)."""
    labels = rng.integers(0, classes, count)
    noise = rng.integers(0, 60, (count, 1, size, size))
    images = (noise + labels[:, None, None, None] * 90).astype(np.uint8)
    return ImageDataset(images, labels.astype(np.int64), tuple("abc"[:classes]), "toy")


class ToyTree(cn.Sequential):
    """A small model with the state SimpleCNN lacks: BatchNorm's running statistics and
    Dropout's stream of masks (buffers), and a residual block."""

    def __init__(self, *, rng=None, dtype=np.float32):
        super().__init__({
            "conv": cn.Conv2D(1, 4, 3, padding=1, bias=False, rng=rng, dtype=dtype),
            "bn": cn.BatchNorm2D(4, dtype=dtype), "relu": cn.ReLU(),
            "block": cn.Residual({
                "conv": cn.Conv2D(4, 4, 3, padding=1, bias=False, rng=rng, dtype=dtype),
                "bn": cn.BatchNorm2D(4, dtype=dtype)}),
            "pool": cn.GlobalAvgPool2D(), "flatten": cn.Flatten(), "drop": cn.Dropout(0.3),
            "fc": cn.Linear(4, 3, rng=rng, dtype=dtype)})

    def config(self):
        return {"name": "ToyTree"}


cn.register_model(ToyTree)


def toy_run(tmp_path, name, seed=0, model_seed=1, callbacks=(), resume=None, epochs=3,
            epoch_callbacks=(), random_erasing=0.0, processes=None, tree=False):
    """A short seeded run on toy data: SGD Nesterov + one-cycle (momentum cycled) + augmentation;
    SimpleCNN, or with tree=True a `ToyTree`."""
    data_rng = np.random.default_rng(123)
    train, val = toy_data(data_rng), toy_data(data_rng, count=30)
    model_rng = np.random.default_rng(model_seed)
    model = ToyTree(rng=model_rng) if tree else cn.SimpleCNN((1, 8, 8), 3, rng=model_rng)
    opt = cn.SGD(model, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    history = cn.fit(model, train, val, optimizer=opt, epochs=epochs, batch_size=16,
                     schedule=cn.OneCycle(0.05, total_steps=epochs * 6),
                     rng=np.random.default_rng(seed), run_dir=tmp_path / name,
                     callbacks=callbacks, epoch_callbacks=epoch_callbacks, resume=resume,
                     random_erasing=random_erasing, progress=False, verbose=False,
                     processes=processes)
    return model, history


def stop_after(step):
    return lambda info: info.step == step


def test_fit_learns_and_writes_metrics_and_checkpoints(tmp_path):
    model, history = toy_run(tmp_path, "run")
    assert history.status == "completed" and len(history) == 3
    assert set(history[0]) == {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc",
                               "seconds"}
    assert history[-1]["val_acc"] > 0.9 and history[-1]["train_loss"] < history[0]["train_loss"]
    lines = (tmp_path / "run" / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == list(history)
    last = cn.load_checkpoint(tmp_path / "run" / LAST_FILE)
    assert last.metadata["progress"]["epoch"] == 3 and last.metadata["class_names"] == list("abc")
    assert np.array_equal(last.build_model().parameters()["fc2.W"], model.parameters()["fc2.W"])
    best = cn.load_checkpoint(tmp_path / "run" / BEST_FILE)
    best_epoch = max(history, key=lambda e: e["val_acc"])["epoch"]
    assert best.metadata["history"][-1]["epoch"] == best_epoch
    mean, std = history.normalization
    assert mean.dtype == np.float32 and np.array_equal(last.arrays["normalization/std"], std)


@pytest.mark.parametrize("stop_step, erasing, tree", [(8, 0.0, False), (6, 0.0, False),
                                                     (8, 0.5, False), (8, 0.0, True)])
def test_interrupt_and_resume_gives_identical_weights(tmp_path, stop_step, erasing, tree):
    """Inside epoch 2 or at the end of epoch 1; with random erasing too; a model with
    BatchNorm and Dropout (its running statistics and its masks must continue too)."""
    straight, straight_history = toy_run(tmp_path, "straight", random_erasing=erasing, tree=tree)
    _, stopped = toy_run(tmp_path, "resumed", callbacks=[stop_after(stop_step)],
                         random_erasing=erasing, tree=tree)
    assert stopped.status == "interrupted" and "last.npz" in stopped.message
    checkpoint = cn.load_checkpoint(tmp_path / "resumed" / LAST_FILE)
    assert checkpoint.metadata["progress"]["step"] == stop_step
    # different seeds and initial weights: everything must come from the checkpoint
    resumed, history = toy_run(tmp_path, "resumed", seed=99, model_seed=98, resume=checkpoint,
                               random_erasing=erasing, tree=tree)
    assert history.status == "completed"
    assert [e["train_loss"] for e in history] == [e["train_loss"] for e in straight_history]
    for name, value in (*straight.parameters().items(), *straight.buffers().items()):
        assert np.array_equal(resumed.parameters().get(name, resumed.buffers().get(name)),
                              value), name
    without_time = [{k: v for k, v in e.items() if k != "seconds"} for e in history]
    assert without_time == [{k: v for k, v in e.items() if k != "seconds"}
                            for e in straight_history]
    assert len((tmp_path / "resumed" / METRICS_FILE).read_text().splitlines()) == 3


def test_an_epoch_callback_stops_the_run_resumably_after_that_epoch(tmp_path):
    """Early stopping: the callback sees each epoch's logged metrics; a true answer stops
    the run with the epoch's checkpoint, from which the run resumes exactly."""
    seen = []

    def enough(entry):
        seen.append(dict(entry))
        return entry["epoch"] == 1

    straight, _ = toy_run(tmp_path, "straight")
    _, history = toy_run(tmp_path, "stopped", epoch_callbacks=[enough])
    assert history.status == "interrupted" and history.message.startswith(
        "an epoch callback asked to stop: stopped after epoch 1; saved ")
    assert seen == list(history) and len(history) == 1 and "val_acc" in seen[0]
    assert cn.load_checkpoint(tmp_path / "stopped" / LAST_FILE).metadata["progress"]["step"] == 6
    resumed, history = toy_run(tmp_path, "stopped", resume=tmp_path / "stopped" / LAST_FILE)
    assert history.status == "completed" and len(history) == 3
    for name, value in straight.parameters().items():
        assert np.array_equal(resumed.parameters()[name], value), name


def poisoned_run(run_dir, step: int, validation: bool):
    """A toy fit whose fc2.W becomes infinite after optimizer step `step` (6 steps an epoch)."""
    data_rng = np.random.default_rng(0)
    train = toy_data(data_rng)
    val = toy_data(data_rng, count=30) if validation else None
    model = cn.SimpleCNN((1, 8, 8), 3, rng=data_rng)

    def poison(info):
        if info.step == step:
            model.parameters()["fc2.W"][...] = np.inf

    return cn.fit(model, train, val, optimizer=cn.SGD(model, lr=0.01), epochs=3, batch_size=16,
                  rng=data_rng, run_dir=run_dir, callbacks=[poison], progress=False,
                  verbose=False)


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # the poisoned weights
def test_a_validation_loss_that_is_not_finite_stops_the_run(tmp_path):
    """Weights poisoned after the epoch's last step: training ended, validation diverges."""
    history = poisoned_run(tmp_path, 6, validation=True)
    assert history.status == "diverged" and len(history) == 0
    assert history.message == ("the validation loss became nan after epoch 1: stopped; try a "
                               "lower learning rate")
    assert not (tmp_path / LAST_FILE).exists()  # nothing saved from the poisoned weights


def test_a_run_without_a_folder_stops_on_request_and_says_where(tmp_path):
    data_rng = np.random.default_rng(123)
    model = cn.SimpleCNN((1, 8, 8), 3, rng=np.random.default_rng(1))
    history = cn.fit(model, toy_data(data_rng), optimizer=cn.SGD(model, lr=0.01), epochs=3,
                     batch_size=16, rng=data_rng, callbacks=[stop_after(8)], progress=False,
                     verbose=False)
    assert history.status == "interrupted" and history.checkpoint is None
    assert history.message == "a callback asked to stop: stopped at epoch 2, batch 2/6"


@pytest.mark.skipif(not fork_available(), reason="worker processes need os.fork (Linux)")
def test_a_run_over_worker_processes_is_the_run_over_threads(tmp_path, monkeypatch):
    """The batch split over processes (fit's default on Linux) or threads: the same weights,
    bit for bit, and no worker process left running after fit."""
    forks = []
    real_fork = part_processes._fork
    monkeypatch.setattr(part_processes, "_fork", lambda: forks.append(1) or real_fork())
    children_before = _children()
    in_processes, history = toy_run(tmp_path, "processes", epochs=2)  # the default
    assert history.status == "completed" and len(forks) == 1  # one worker, the whole run
    in_threads, _ = toy_run(tmp_path, "threads", epochs=2, processes=False)
    assert len(forks) == 1
    for name, value in in_threads.state_dict().items():
        np.testing.assert_array_equal(in_processes.state_dict()[name], value, err_msg=name)
    assert _children() <= children_before  # (an earlier test's may have ended meanwhile)


def _children() -> set:
    """This process's child processes (Linux)."""
    tasks = Path(f"/proc/{os.getpid()}/task")
    return {pid for task in tasks.iterdir()
            for pid in (task / "children").read_text().split()}


def test_sigint_stops_after_the_batch_with_a_resumable_checkpoint(tmp_path):
    def interrupt(info):
        if info.step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    previous = signal.getsignal(signal.SIGINT)
    _, history = toy_run(tmp_path, "run", callbacks=[interrupt])
    assert history.status == "interrupted" and history.signal == signal.SIGINT
    assert "received SIGINT" in history.message
    assert signal.getsignal(signal.SIGINT) is previous  # handler restored
    assert cn.load_checkpoint(tmp_path / "run" / LAST_FILE).metadata["progress"]["step"] == 4


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # the poisoned weights
def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    history = poisoned_run(tmp_path, 8, validation=False)
    assert history.status == "diverged"
    assert "became nan at epoch 2, batch 3" in history.message
    assert "checkpoints are untouched" in history.message
    assert len(history) == 1
    checkpoint = cn.load_checkpoint(tmp_path / LAST_FILE)
    assert checkpoint.metadata["progress"] == {**checkpoint.metadata["progress"], "epoch": 1,
                                               "batch": 0, "step": 6}
    assert np.isfinite(checkpoint.parameters["fc2.W"]).all()


def test_evaluate_matches_a_direct_computation(rng):
    data = toy_data(rng, count=23)
    model = cn.SimpleCNN((1, 8, 8), 3, rng=rng)
    normalization = (np.array([0.3], np.float32), np.array([0.2], np.float32))
    metrics = cn.evaluate(model, data, normalization, batch_size=10)
    x = (data.images / np.float32(255) - np.float32(0.3)) / np.float32(0.2)
    logits = model.forward(x.astype(np.float32))
    assert metrics["accuracy"] == np.mean(logits.argmax(1) == data.labels)
    assert metrics["loss"] == pytest.approx(float(cn.CrossEntropyLoss()(logits, data.labels)),
                                            rel=1e-5)
    probabilities = cn.predict_proba(model, data.images, normalization)
    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probabilities, shifted / shifted.sum(axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-7)  # the softmax of the logits


def test_fit_errors(rng):
    data = toy_data(rng)
    model = cn.SimpleCNN((1, 8, 8), 3, rng=rng)
    other = cn.SimpleCNN((1, 8, 8), 3, rng=rng)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        cn.fit(model, data, optimizer=cn.SGD(model, lr=0.1), epochs=0)
    with pytest.raises(ValueError, match="optimizer must be built on the model"):
        cn.fit(model, data, optimizer=cn.SGD(other, lr=0.1), epochs=1)
    floats = ImageDataset.__new__(ImageDataset)
    object.__setattr__(floats, "images", data.images.astype(np.float32))
    object.__setattr__(floats, "labels", data.labels)
    with pytest.raises(TypeError, match="train_data must have uint8 images"):
        cn.fit(model, floats, optimizer=cn.SGD(model, lr=0.1), epochs=1)


@pytest.mark.parametrize("count, batch_size", [(33, 16), (8, 1), (1, 16)])
@pytest.mark.parametrize("norm", ["1d", "2d"])
def test_a_batch_of_one_image_under_a_1x1_batchnorm_is_refused_before_training(
        tmp_path, rng, count, batch_size, norm):
    """The last batch of 33 images in 16s holds one: a BatchNorm after the global pool (or
    one over the 1x1 maps of a stride-8 convolution) would get one value per channel there.
    fit says so before its first step (the run folder is not made); the same model without
    it trains on such batches (its BatchNorm over 8x8 maps gets 64 values per channel)."""
    data = toy_data(rng, count=count)
    where = {16: "33 training images in batches of 16 end with a batch of 1",
             1: "batches of 1 image"}[batch_size] if count > 1 else "a single training image"
    late = {"1d": ("bn1d", cn.BatchNorm1D(4)), "2d": ("bn1x1", cn.BatchNorm2D(4))}[norm]

    def model(*late_norm):
        maps = {"conv": cn.Conv2D(1, 4, 3, padding=1, rng=rng), "bn": cn.BatchNorm2D(4),
                "squeeze": cn.Conv2D(4, 4, 8, stride=8, rng=rng) if norm == "2d" else
                cn.GlobalAvgPool2D()}
        features = {"flatten": cn.Flatten()}
        (maps if norm == "2d" else features).update(late_norm)
        return cn.Sequential({**maps, **features, "fc": cn.Linear(4, 3, rng=rng)})
    refused = model(late)
    shape = {"1d": r"\(4,\)", "2d": r"\(4, 1, 1\)"}[norm]
    with pytest.raises(ValueError, match=rf"BatchNorm '{late[0]}' gets one value per channel "
                                         rf"from each image \(its input per image: {shape}\), "
                                         rf"and {where}: that batch's variance is undefined; "
                                         rf"change --limit or --batch-size"):
        cn.fit(refused, data, optimizer=cn.SGD(refused, lr=0.1), epochs=1,
               batch_size=batch_size, run_dir=tmp_path / "run", progress=False, verbose=False)
    assert not (tmp_path / "run").exists()
    trained = model()
    history = cn.fit(trained, data, optimizer=cn.SGD(trained, lr=0.1), epochs=1,
                     batch_size=batch_size, progress=False, verbose=False)
    assert history.status == "completed"


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Fashion-MNIST is not installed")
def test_short_real_training_run_learns():
    train = load_dataset("fashion-mnist", "train").subset(slice(0, 2000))
    test = load_dataset("fashion-mnist", "test").subset(slice(0, 1000))
    rng = np.random.default_rng(0)
    model = cn.SimpleCNN((1, 28, 28), 10, rng=rng)
    history = cn.fit(model, train, optimizer=cn.Adam(model, lr=1e-3), epochs=1, batch_size=64,
                     augment=False, rng=rng, progress=False, verbose=False)
    accuracy = cn.evaluate(model, test, history.normalization)["accuracy"]
    assert accuracy > 0.6  # chance is 0.1


# The run stopped after step 8: epoch 1 (0-based), batch 2 of 6, 32 images seen.
RESUME_EDITS = [
    ("progress.epoch", 7, r"progress.epoch must be an integer in \[0, 3\], got 7"),
    ("progress.batch", 6, r"progress.batch must be an integer in \[0, 5\], got 6"),
    ("progress.step", 3, r"progress.step must be epoch · batches per epoch \+ batch = 8, got 3"),
    ("progress.seen", 31, r"progress.seen must be the images of the 2 batches done = 32"),
    ("progress.correct", 33, r"progress.correct must be an integer in \[0, 32\]"),
    ("progress.loss_sum", float("nan"), r"progress.loss_sum must be a finite number"),
    ("progress.best_score", None, r"progress.best_score must be a number after the first"),
    ("fit.batch_size", 0, r"fit.batch_size must be an integer >= 1, got 0"),
    ("fit.augment", "yes", r"fit.augment must be True or False"),
    ("epochs", 10**9, r"epochs must be an integer in \[1, 1000000\]"),
    ("history.0.epoch", 2, r"history\[0\].epoch must be 1, got 2"),
    ("history.0.train_loss", float("inf"), r"history\[0\].train_loss must be a finite number"),
    ("rng_state.bit_generator", "Mersenne", r"rng_state.bit_generator must be one of"),
    ("rng_state.state.state", "abc", r"rng_state is not a state of PCG64"),
    ("optimizer.hyperparameters.momentum", 1.5, r"momentum must be a finite number in \[0.0, 1.0\)"),
    ("optimizer.hyperparameters.weight_decay", float("inf"), r"weight_decay must be a finite number"),
]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """(metadata, arrays) of last.npz of a run stopped after step 8, and its folder."""
    from corruptions import read_npz

    folder = tmp_path_factory.mktemp("stopped")
    toy_run(folder, "run", callbacks=[stop_after(8)])
    return read_npz(folder / "run" / LAST_FILE), folder


@pytest.mark.parametrize("field, value, message", RESUME_EDITS)
def test_edited_progress_is_refused(tmp_path, stopped_run, field, value, message):
    from corruptions import set_path, write_npz

    (metadata, arrays), _ = stopped_run
    path = write_npz(tmp_path / "edited.npz", set_path(metadata, field, value), arrays)
    with pytest.raises(ValueError, match=rf"edited\.npz: .*{message}"):
        cn.load_checkpoint(path)


def test_random_erasing_changes_the_batches_and_older_runs_resume_without_it(tmp_path,
                                                                           stopped_run):
    """A run saved before random erasing existed (no such entry) resumes as a run without
    it, and is refused by a run with it; erasing changes what is trained."""
    from corruptions import write_npz

    (metadata, arrays), _ = stopped_run
    assert metadata["fit"]["random_erasing"] == 0.0
    metadata = {**metadata, "fit": {k: v for k, v in metadata["fit"].items()
                                    if k != "random_erasing"}}
    path = write_npz(tmp_path / "old.npz", metadata, arrays)
    with pytest.raises(ValueError, match=r"old\.npz: was written with settings .*"
                                         r"'random_erasing': 0\.0.*'random_erasing': 0\.5"):
        toy_run(tmp_path, "erasing", resume=path, random_erasing=0.5)
    resumed, history = toy_run(tmp_path, "plain", resume=path)
    assert history.status == "completed"
    erased, _ = toy_run(tmp_path, "erased", random_erasing=0.5)
    assert not np.array_equal(erased.parameters()["fc2.W"], resumed.parameters()["fc2.W"])


def test_an_edited_checkpoint_is_refused_before_resuming(tmp_path, stopped_run):
    from corruptions import set_path, write_npz

    (metadata, arrays), _ = stopped_run
    path = write_npz(tmp_path / "last.npz", set_path(metadata, "progress.batch", 9), arrays)
    with pytest.raises(ValueError, match=r"last\.npz: progress.batch must be"):
        toy_run(tmp_path, "again", resume=path)
    assert not (tmp_path / "again").exists()  # refused before anything was written


@pytest.mark.parametrize("order", ["missing", "repeated", "short"])
def test_the_epochs_order_must_be_a_permutation(tmp_path, stopped_run, order):
    from corruptions import write_npz

    (metadata, arrays), _ = stopped_run
    arrays = dict(arrays)
    stored = arrays.pop("extra/epoch_order")
    if order != "missing":
        arrays["extra/epoch_order"] = np.zeros_like(stored) if order == "repeated" else stored[:-1]
    path = write_npz(tmp_path / "edited.npz", metadata, arrays)
    with pytest.raises(ValueError, match=r"edited\.npz: .*epoch_order"):
        cn.load_checkpoint(path)


def test_public_arguments_are_checked_at_the_boundary(tmp_path, rng):
    train = toy_data(rng)
    model = cn.SimpleCNN((1, 8, 8), 3, rng=rng)
    opt = cn.SGD(model, lr=0.1)
    for kwargs, error, message in [
        ({"rng": 42}, TypeError, "rng must be a numpy.random.Generator"),
        ({"schedule": 0.1}, TypeError, "schedule must be a cnnumpy.schedules.Schedule"),
        ({"augment": None}, ValueError, "augment must be True or False, got None"),
        ({"crop_padding": -1}, ValueError, "crop_padding must be an integer >= 0, got -1"),
        ({"random_erasing": 1.5}, ValueError, r"random_erasing must be a finite number in "),
        ({"random_erasing": 0.5, "augment": False}, ValueError,
         "random_erasing=0.5 is an augmentation: it needs augment=True"),
        ({"normalization": (np.float32([np.nan]), np.float32([1]))}, ValueError,
         "normalization mean must be finite"),
        ({"normalization": "none"}, TypeError, "normalization must be a pair"),
        ({"run_dir": ""}, ValueError, "run_dir must name a folder"),
        ({"processes": "yes"}, ValueError, "processes must be True or False, got 'yes'"),
    ]:
        with pytest.raises(error, match=message):
            cn.fit(model, train, optimizer=opt, epochs=1, progress=False, verbose=False,
                   **kwargs)
    with pytest.raises(TypeError, match="normalization must be a pair"):
        cn.evaluate(model, train, None)
    with pytest.raises(ValueError, match=r"images_uint8 is empty"):
        cn.predict_proba(model, np.zeros((0, 1, 8, 8), np.uint8), (0.5, 0.2))
    for name, value in [("lr", np.inf), ("eps", np.inf), ("weight_decay", np.inf)]:
        with pytest.raises(ValueError, match=rf"{name} must be a finite number"):
            cn.Adam(model, **{name: value})
    with pytest.raises(TypeError, match="optimizer state must be a dict"):
        opt.load_state_dict(None)
    with pytest.raises(ValueError, match=r"optimizer state lacks \['arrays', 'hyperparameters'"):
        opt.load_state_dict({"name": "SGD"})


@pytest.mark.parametrize("field, value, message", [
    ("history.0.train_acc", 1.5, r"history\[0\].train_acc must be a finite number in \[0.0, 1.0\]"),
    ("progress.best_score", 0.01, r"progress.best_score must be the history's best accuracy"),
    ("train_settings.optimizer", "adam", r"train_settings.optimizer is 'adam' but the optimizer"),
    ("train_settings.lr", 7.0, r"train_settings \(schedule 'onecycle', lr 7.0\) disagree"),
    ("train_settings.limit", 3, r"fit.train_size 64 is more than train_settings.limit 3"),
    ("progress.loss_sum", 5.0, r"progress.loss_sum and progress.seconds must be 0 before"),
    ("optimizer.hyperparameters.lr", 0.5, r"optimizer.hyperparameters lr 0.5 is not the "
                                          r"schedule's .* at step 1, the last one taken"),
    ("optimizer.hyperparameters.momentum", 0.5,
     r"optimizer.hyperparameters momentum 0.5 is not the schedule's"),
    ("optimizer.steps", 1, r"optimizer.steps must be an integer >= 2, got 1"),
])
def test_a_checkpoint_that_disagrees_with_itself_is_refused(tmp_path, field, value, message):
    """Fields that must agree (settings of the command line, optimizer, schedule, history)."""
    from corruptions import read_npz, set_path, write_npz
    from cnnumpy.cli import main
    from cnnumpy.data.idx import write_idx_split

    rng = np.random.default_rng(0)
    for split, count in (("train", 64), ("test", 8)):
        write_idx_split(tmp_path / "data" / "fashion-mnist", split,
                        rng.integers(0, 256, (count, 28, 28), dtype=np.uint8),
                        rng.integers(0, 10, count))
    assert main(["train", "--data-dir", str(tmp_path / "data"), "--epochs", "1", "--batch-size",
                 "32", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    metadata, arrays = read_npz(tmp_path / "run" / LAST_FILE)
    path = write_npz(tmp_path / "edited.npz", set_path(metadata, field, value), arrays)
    with pytest.raises(ValueError, match=rf"edited\.npz: {message}"):
        cn.load_checkpoint(path)
