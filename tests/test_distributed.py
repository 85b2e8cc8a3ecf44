"""Data parallelism over MPI ranks: P ranks train as one process does, agree at the start,
stop together on a signal, resume exactly, and stop within a time limit when a rank dies or
hangs.

The tests marked `needs_mpi` start MPI jobs with `mpirun` (Open MPI's, from the extra `mpi`)
running tests/distributed_worker.py; they are skipped only when mpi4py or mpirun is not
installed (CI installs both).
"""

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cnnumpy as cn
from cnnumpy.cli import main
from cnnumpy.distributed import (FlatParameters, RankAgreementError, Replicas, Solo,
                                 check_agreement, part_bounds)
from distributed_worker import NormDrop, toy_data, toy_fit

WORKER = Path(__file__).with_name("distributed_worker.py")
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")
needs_mpi = pytest.mark.skipif(
    MPIRUN is None or importlib.util.find_spec("mpi4py") is None,
    reason="needs mpi4py and mpirun (pip install -e '.[mpi]')")


ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
       "OPENBLAS_NUM_THREADS": "1"}  # Open MPI refuses root without the first two


def command(ranks, *args, module=False):
    """mpirun of the worker (or `python -m cnnumpy` with module=True) on `ranks` ranks."""
    program = ["-m", "cnnumpy"] if module else [str(WORKER)]
    return [MPIRUN, "--oversubscribe", "-n", str(ranks), sys.executable, *program,
            *map(str, args)]


def mpirun(ranks, *args, cwd, timeout=90, check=True, module=False):
    result = subprocess.run(command(ranks, *args, module=module), cwd=cwd, env=ENV,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}: {result.stdout}\n{result.stderr}")
    return result


def max_difference(checkpoint, model):
    return max(np.abs(checkpoint.parameters[name] - value).max()
               for name, value in model.parameters().items())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: the worker's fit in this process, with its initial weights."""
    folder = tmp_path_factory.mktemp("one")
    initial = cn.SimpleCNN((1, 8, 8), 3, rng=np.random.default_rng(1), dtype=np.float64)
    model, history = toy_fit(folder / "run")
    return model, history, initial


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Uninterrupted 2- and 3-rank runs of the worker, the buffers in the memory the ranks
    share and sent by collectives: {(ranks, memory): last.npz}."""
    if MPIRUN is None or importlib.util.find_spec("mpi4py") is None:
        pytest.skip("needs mpi4py and mpirun")
    folder = tmp_path_factory.mktemp("straight")
    runs = {}
    for ranks in (2, 3):
        for memory in ("shared", "sent"):
            options = ["--no-node-memory"] if memory == "sent" else []
            output = mpirun(ranks, f"r{ranks}{memory}", *options, cwd=folder).stdout
            for rank in range(ranks):  # MPISplit: where the part starts, the sum over ranks
                assert (f"rank {rank}: part from {10 * rank // ranks} of 10, sum of rank + 1 "
                        f"over the ranks {ranks * (ranks + 1) // 2}\n") in output, output
                assert (f"rank {rank}: node memory {memory == 'shared'}, windows left 0\n"
                        in output), output  # freed at the end
                assert f"rank {rank}: own weights after the run True\n" in output, output
            runs[ranks, memory] = cn.load_checkpoint(folder / f"r{ranks}{memory}" / "last.npz")
    return runs


# --------------------------------------------------------------------------- in one process


def test_parts_cover_the_batch_in_rank_order():
    for total in (1, 2, 16, 17):
        for size in (1, 2, 3):
            parts = [part_bounds(total, rank, size) for rank in range(size)]
            assert parts[0].start == 0 and parts[-1].stop == total
            assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
            assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_parts_of_a_batch_are_augmented_as_the_whole_batch():
    images = np.random.default_rng(0).integers(0, 255, (7, 1, 6, 6), dtype=np.uint8)
    whole = cn.train.prepare_batch(images, ([0.5], [0.25]), np.float64,
                                   rng=np.random.default_rng(3), crop_padding=2, flip=True)
    parts = []
    for rank in range(3):
        part = part_bounds(7, rank, 3)
        split = type("Split", (), {"start": part.start, "total": 7})()
        parts.append(cn.train.prepare_batch(images[part], ([0.5], [0.25]), np.float64,
                                            rng=np.random.default_rng(3), crop_padding=2,
                                            flip=True, split=split))
    np.testing.assert_array_equal(np.concatenate(parts), whole)


class Gathered:
    """A group of ranks whose descriptions are given: gather returns what each would send."""

    def __init__(self, descriptions):
        self.descriptions = descriptions

    def gather(self, value, what=""):
        return [sent_by(description) for description in self.descriptions]


class Alone:
    def __init__(self):
        self.sent = []

    def gather(self, value, what=""):
        self.sent.append(value)
        return [value]


def sent_by(description):
    """What check_agreement sends to the other ranks for `description`."""
    alone = Alone()
    check_agreement(alone, description)
    return alone.sent[0]


def test_disagreeing_ranks_are_named_with_the_difference():
    same = {"fit": {"batch_size": 16}, "seed": 0, "metadata": {"data_dir": "/a"}}
    check_agreement(Gathered([same, {**same, "metadata": {"data_dir": "/b"}}]), same)  # paths
    other = {"fit": {"batch_size": 8}, "seed": 0, "metadata": {"data_dir": "/a"}}
    with pytest.raises(RankAgreementError,
                       match=r"fit.batch_size: rank 0 has 16, rank 2 has 8\)"):
        check_agreement(Gathered([same, same, other]), same)
    with pytest.raises(RankAgreementError, match=r"seed: rank 0 has 0, rank 1 has '\(nothing\)'"):
        check_agreement(Gathered([same, {"fit": {"batch_size": 16}}]), same)


class Diverged:
    """Two ranks, the other of which holds different parameters."""

    size = 2

    def gather(self, value, what=""):
        return [value, value ^ 1]


def test_replicas_that_diverged_stop_the_run_loudly(rng):
    model = cn.SimpleCNN((1, 8, 8), 3, rng=rng)
    with pytest.raises(cn.distributed.ReplicasDivergedError,
                       match=r"the ranks' parameters differ after step 7 \(CRC-32: rank 0 "):
        Replicas(model, Diverged()).check(7)


def test_solo_leaves_gradients_and_sums_alone(rng):
    model = cn.SimpleCNN((1, 8, 8), 3, rng=rng)
    grads = {name: grad.copy() for name, grad in model.gradients().items()}
    assert Replicas(model, Solo()).reduce(0.25, 3, 4, 4) == (0.25, 3)
    for name, grad in model.gradients().items():
        assert np.array_equal(grad, grads[name])


def test_distributed_without_mpi4py_is_a_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py raises ImportError
    assert main(["train", "--distributed", "--out", str(tmp_path / "run")]) == 1
    error = capsys.readouterr().err
    assert "distributed training needs mpi4py and an MPI library" in error
    assert "pip install 'cnnumpy[mpi]'" in error and not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- MPI jobs


@needs_mpi
@pytest.mark.parametrize("memory", ["shared", "sent"])
@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_end_with_the_weights_of_one_process(one_process, straight, ranks, memory):
    """On one machine the flat buffers are shared by the ranks; between machines they are
    sent (Reduce_scatter, Allgatherv): either way, the weights of one process. After the
    run, each rank's model has arrays of its own again (the worker writes its rank into
    them and reads them back)."""
    model, history, initial = one_process
    checkpoint = straight[ranks, memory]
    assert checkpoint.metadata["ranks"] == ranks
    assert max_difference(checkpoint, model) < 1e-10
    assert max_difference(checkpoint, initial) > 1e-2  # it trained: the check can fail
    # each rank updated its part of the parameters: the momentum saved is whole all the same
    momentum = cn.load_checkpoint(history.checkpoint).optimizer_arrays
    assert momentum.keys() == checkpoint.optimizer_arrays.keys() and len(momentum) == 8
    for key, value in momentum.items():
        np.testing.assert_allclose(checkpoint.optimizer_arrays[key], value, rtol=1e-10,
                                   atol=1e-12, err_msg=key)
    for ours, theirs in zip(checkpoint.metadata["history"], history):
        assert ours.keys() == theirs.keys()
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-12), key


@needs_mpi
@pytest.mark.parametrize("where", ["rank 0", "all"])
@pytest.mark.parametrize("memory", ["shared", "sent"])
def test_arrays_replaced_during_a_run_keep_the_step_s_gradients(tmp_path, memory, where):
    """Parameter arrays replaced after step 4 by copies (as astype would), on rank 0 alone or
    on every rank: at the next step every rank moves the parameters into new buffers
    (together: in shared memory that is a collective), keeping that step's gradients; the
    weights are those of one process. No validation: the layers' caches of the last step
    hold views of the buffers, which the worker's deepcopy after the run reads."""
    model, _ = toy_fit(tmp_path / "one", validate=False)
    options = ["--no-node-memory"] if memory == "sent" else []
    options += ["--replace-on-rank-0-only"] if where == "rank 0" else []
    result = mpirun(2, "many", "--replace-at", 4, "--no-validation", *options,
                    "--timeout", "30", cwd=tmp_path)
    assert result.stdout.count(" completed ") == 2, result.stdout
    assert "windows left 0" in result.stdout  # both moves' windows freed (shared)
    assert max_difference(cn.load_checkpoint(tmp_path / "many" / "last.npz"), model) < 1e-10


@needs_mpi
@pytest.mark.parametrize("memory", ["shared", "sent"])
def test_arrays_replaced_on_rank_0_alone_give_every_rank_rank_0_s_values(tmp_path, memory):
    """Rank 0 alone scales its parameters by 1.01 after step 4 (new arrays); with a zero
    learning rate nothing else changes them: every rank ends with rank 0's values, the
    initial weights times 1.01 (sent buffers would otherwise mix the ranks' parts)."""
    options = ["--no-node-memory"] if memory == "sent" else []
    mpirun(2, "many", "--replace-at", 4, "--replace-on-rank-0-only", "--factor", 1.01,
           "--lr", 0, *options, "--timeout", "30", cwd=tmp_path)
    initial = cn.SimpleCNN((1, 8, 8), 3, rng=np.random.default_rng(1), dtype=np.float64)
    stored = cn.load_checkpoint(tmp_path / "many" / "last.npz")
    for name, value in initial.parameters().items():
        np.testing.assert_array_equal(stored.parameters[name], value * 1.01, err_msg=name)


@needs_mpi
def test_shared_memory_that_a_caller_still_refers_to_is_kept(tmp_path):
    """A callback kept the parameter arrays of the last step (views of the shared buffer):
    that window is not freed, and the arrays read back after the run."""
    result = mpirun(2, "many", "--keep-parameters", "--no-validation", "--timeout", "30",
                    cwd=tmp_path)
    assert "rank 0: node memory True, windows left 1" in result.stdout, result.stdout
    kept = [float(line.split()[-1]) for line in result.stdout.splitlines() if " kept " in line]
    assert len(kept) == 2 and kept[0] == kept[1] != 0  # one shared buffer, whole


@needs_mpi
def test_without_room_in_dev_shm_the_ranks_send_the_buffers(tmp_path, one_process):
    model, _, _ = one_process
    result = mpirun(2, "many", "--no-room", "--timeout", "30", cwd=tmp_path)
    assert "/dev/shm lacks the" in result.stderr and "send them instead" in result.stderr
    assert "rank 1: node memory True, windows left 0" in result.stdout, result.stdout
    assert max_difference(cn.load_checkpoint(tmp_path / "many" / "last.npz"), model) < 1e-10


@needs_mpi
def test_adam_over_three_ranks_with_a_run_folder_on_rank_0_only_equals_one_process(tmp_path):
    """Adam (two state arrays, the step count in its bias correction) shared out over 3
    ranks, with only rank 0 given a run folder (the others None, as scripts often write it):
    the run completes, and its weights and Adam state are one process's."""
    model, history = toy_fit(tmp_path / "one", optimizer="adam")
    result = mpirun(3, "many", "--optimizer", "adam", "--run-dir-on-rank-0-only",
                    "--timeout", "30", cwd=tmp_path)
    assert result.stdout.count(" completed ") == 3, result.stdout
    stored = cn.load_checkpoint(tmp_path / "many" / "last.npz")
    assert max_difference(stored, model) < 1e-10
    one = cn.load_checkpoint(history.checkpoint)
    assert one.optimizer_arrays.keys() == stored.optimizer_arrays.keys()
    assert len(one.optimizer_arrays) == 16 and one.metadata["optimizer"]["steps"] == 9
    for key, value in one.optimizer_arrays.items():
        np.testing.assert_allclose(stored.optimizer_arrays[key], value, rtol=1e-10,
                                   atol=1e-14, err_msg=key)


class AssignsGradients(cn.Linear):
    """A layer written the other way: backward assigns new gradient arrays."""

    def _backward(self, dout, cache, input_grad=True):
        dx, self.dW, self.db = cn.functional.linear_backward(dout, cache, input_grad)
        return dx


def test_flat_parameters_hold_the_model_s_parameters_and_gradients_end_to_end(rng):
    """The parameters and gradients become views of two flat buffers, in the order of
    parameters(), values kept (a transposed parameter too, now contiguous); backward writes
    into the views, and a layer that assigns new gradient arrays is copied in."""
    model = cn.Sequential([cn.Flatten(), cn.Linear(12, 5, rng=rng), cn.ReLU(),
                           AssignsGradients(5, 3, rng=rng)]).astype(np.float64)
    model["1"].W = np.asfortranarray(model["1"].W)
    before = {name: param.copy() for name, param in model.parameters().items()}
    flat = FlatParameters(model)
    assert flat.holds(model)
    np.testing.assert_array_equal(flat.params, np.concatenate(
        [value.reshape(-1) for value in before.values()]))
    for name, param in model.parameters().items():
        assert np.shares_memory(param, flat.params) and param.flags.c_contiguous, name
        np.testing.assert_array_equal(param, before[name])

    criterion = cn.CrossEntropyLoss()
    x, labels = rng.standard_normal((4, 3, 2, 2)), np.array([0, 2, 1, 2])
    criterion.forward(model.forward(x), labels)
    model.backward(criterion.backward())
    assigned = model["3"].dW
    assert not np.shares_memory(assigned, flat.grads)  # the layer made its own array
    expected = np.concatenate([grad.reshape(-1) for grad in model.gradients().values()])
    assert np.count_nonzero(expected) > 10
    np.testing.assert_array_equal(flat.gradients(), expected)
    assert all(np.shares_memory(grad, flat.grads) for grad in model.gradients().values())

    model.astype(np.float32)  # new arrays: the buffers no longer hold the model
    assert not flat.holds(model)


def test_flat_parameters_refuse_mixed_dtypes_tied_weights_and_misshapen_gradients(rng):
    model = cn.Sequential([cn.Flatten(), cn.Linear(4, 2, rng=rng), cn.Linear(2, 2, rng=rng)])
    model["2"].W = model["2"].W.astype(np.float64)
    with pytest.raises(ValueError, match=r"the parameters mix dtypes \(float32, float64\)"):
        FlatParameters(model)
    model["2"].W = model["2"].W.astype(np.float32)
    model["2"].b = model["1"].b  # one array in two places
    with pytest.raises(ValueError, match=r"the parameters 1\.b and 2\.b are one array"):
        FlatParameters(model)
    model["2"].b = np.zeros(2, np.float32)
    flat = FlatParameters(model)
    model["2"].dW = np.zeros((2, 3), np.float32)  # as a faulty layer of one's own might
    with pytest.raises(ValueError, match=r"the gradient of 2\.W has shape \(2, 3\), the "
                                         r"parameter \(2, 2\)"):
        flat.gradients()


@needs_mpi
@pytest.mark.parametrize("ranks, workers, memory", [(2, 1, "shared"), (3, 1, "shared"),
                                                    (2, 2, "shared"), (3, 1, "sent")])
def test_batchnorm_and_dropout_over_ranks_equal_one_process(tmp_path, ranks, workers, memory):
    """Global-batch statistics (SyncBatchNorm) and each rank's slice of the whole batch's
    dropout masks, also with each rank's part split over threads (BatchParallel), the
    buffers shared or sent: the weights, running statistics and Dropout streams of P ranks
    are one process's."""
    model, _ = toy_fit(tmp_path / "one", model="normdrop", count=35)
    options = ["--no-node-memory"] if memory == "sent" else []
    mpirun(ranks, "many", "--model", "normdrop", "--workers", workers, *options, cwd=tmp_path)
    stored = cn.load_checkpoint(tmp_path / "many" / "last.npz").parameters
    for name, value in model.state_dict().items():  # parameters and buffers
        np.testing.assert_allclose(stored[name], value, rtol=1e-10, atol=1e-12, err_msg=name)
    assert model["bn"].num_batches_tracked == 3 * 3  # 3 epochs of 3 batches, counted once


def test_batchnorm_over_more_ranks_than_a_batch_has_images_is_refused(tmp_path):
    class Three(cn.distributed.Solo):  # 3 ranks, as far as fit's checks before any collective
        size = 3

    model = NormDrop((1, 8, 8), 3, rng=np.random.default_rng(0), dtype=np.float64)
    with pytest.raises(ValueError, match=r"each of the 3 ranks at least one image, but 34 "
                                         r"training images in batches of 16 end with a batch of 2"):
        cn.fit(model, toy_data(np.random.default_rng(0), 34), optimizer=cn.SGD(model, lr=0.1),
               epochs=1, batch_size=16, communicator=Three(), progress=False, verbose=False)


@needs_mpi
def test_ranks_started_differently_fail_at_the_start_naming_the_difference(tmp_path):
    result = mpirun(2, "run", "--seed-of-rank-1", 5, cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "the ranks were not started alike" in result.stderr
    assert "random generator: rank 0 has 'state crc32" in result.stderr
    assert "rank 1 has 'state crc32" in result.stderr
    result = mpirun(2, "run", "--batch-of-rank-1", 8, cwd=tmp_path, check=False)
    assert "fit.batch_size: rank 0 has 16, rank 1 has 8" in result.stderr
    assert not (tmp_path / "run" / "last.npz").exists()


@needs_mpi
def test_a_hung_rank_stops_every_rank_within_the_time_limit(tmp_path):
    started = time.monotonic()
    result = mpirun(2, "run", "--hang", 1, 4, "--timeout", 3, cwd=tmp_path, check=False)
    assert time.monotonic() - started < 30
    assert result.returncode != 0
    assert "got no answer from every rank within 3 s" in result.stderr, result.stderr
    assert f"The last checkpoint, run{os.sep}last.npz, is whole" in result.stderr
    checkpoint = cn.load_checkpoint(tmp_path / "run" / "last.npz")  # the end of epoch 1
    assert checkpoint.metadata["progress"]["step"] == 3


@needs_mpi
def test_a_dead_rank_stops_every_rank(tmp_path):
    started = time.monotonic()
    result = mpirun(2, "run", "--die", 1, 4, cwd=tmp_path, check=False)
    assert time.monotonic() - started < 30
    assert result.returncode != 0 and "rank 0 completed" not in result.stdout
    assert cn.load_checkpoint(tmp_path / "run" / "last.npz").metadata["progress"]["step"] == 3


@needs_mpi
def test_sigint_to_mpirun_saves_and_resumes_exactly_on_as_many_or_other_ranks(tmp_path,
                                                                              straight):
    job = subprocess.Popen(command(2, "run", "--signal-at", 4), cwd=tmp_path, env=ENV,
                           text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           start_new_session=True)
    line = ""
    while not line.startswith("step"):
        line = job.stdout.readline()
        assert line, "the job ended before step 4"
    assert line == "step 4\n"
    job.send_signal(signal.SIGINT)  # Open MPI sends the ranks SIGTERM, then SIGKILL
    job.communicate(timeout=60)
    assert job.returncode != 0
    stopped = cn.load_checkpoint(tmp_path / "run" / "last.npz").metadata
    assert 4 <= stopped["progress"]["step"] < 9 and stopped["progress"]["batch"] > 0
    shutil.copytree(tmp_path / "run", tmp_path / "again")

    mpirun(2, "run", "--resume", cwd=tmp_path)
    resumed = cn.load_checkpoint(tmp_path / "run" / "last.npz")
    assert resumed.metadata["progress"]["step"] == 9
    for name, value in straight[2, "shared"].parameters.items():
        assert np.array_equal(resumed.parameters[name], value), name  # bit for bit
    mpirun(3, "again", "--resume", cwd=tmp_path)
    assert max_difference(cn.load_checkpoint(tmp_path / "again" / "last.npz"),
                          straight[2, "shared"].build_model()) < 1e-10


@needs_mpi
def test_cnnumpy_train_distributed_matches_one_process(tmp_path):
    from cnnumpy.data.idx import write_idx_split

    rng = np.random.default_rng(0)
    for split, count in (("train", 64), ("test", 20)):
        labels = rng.integers(0, 10, count)
        images = (rng.integers(0, 30, (count, 28, 28)) + labels[:, None, None] * 22).astype(np.uint8)
        write_idx_split(tmp_path / "data" / "fashion-mnist", split, images, labels)
    args = ["train", "--data-dir", tmp_path / "data", "--epochs", 2, "--batch-size", 16,
            "--val-split", "0.25", "--no-progress"]
    assert main([*map(str, args), "--out", str(tmp_path / "one")]) == 0
    result = mpirun(2, *args, "--distributed", "--out", "two", cwd=tmp_path, module=True)
    assert result.stdout.count("test accuracy") == 1  # rank 0 reports
    assert "on 2 ranks; run folder two" in result.stderr
    one = cn.load_checkpoint(tmp_path / "one" / "last.npz")
    two = cn.load_checkpoint(tmp_path / "two" / "last.npz")
    assert two.metadata["ranks"] == 2 and two.metadata["progress"]["step"] == 6
    for name, value in one.parameters.items():  # float32: equal up to the order of sums
        np.testing.assert_allclose(two.parameters[name], value, rtol=1e-4, atol=1e-6)
