"""The fit loop: shuffled, augmented, normalised batches; validation; metrics; checkpoints;
clean interrupts and exact resumption.

    import numpy as np, cnnumpy as cn
    from cnnumpy.data import load_dataset, num_batches, train_val_split
    rng = np.random.default_rng(0)
    train, val = train_val_split(load_dataset("fashion-mnist"), 0.1, rng)
    model = cn.SimpleCNN(train.sample_shape, train.num_classes, rng=rng)
    opt = cn.SGD(model, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    history = cn.fit(model, train, val, optimizer=opt, epochs=15, rng=rng, run_dir="runs/a",
                     schedule=cn.OneCycle(0.05, total_steps=15 * num_batches(train, 128)))
    history[-1]["val_acc"], history.status          # 0.93.., "completed"

One epoch: `rng` draws a permutation of the training set; each batch of `batch_size` images
is gathered (uint8), augmented (random crop with `crop_padding` zero pixels, horizontal flip)
when `augment`, normalised per channel with the training set's mean and std, and takes one
optimizer step on the mean cross-entropy. After the epoch the model is evaluated on the
validation set, a line goes to `run_dir/metrics.jsonl`, and `run_dir/last.npz` (and
`best.npz` when the validation accuracy is the best so far) is written.

A checkpoint holds everything the loop depends on (weights, optimizer state, schedule, step,
RNG state, the epoch's order and position, running sums, history), so `fit(..., resume=path)`
continues a run that was stopped by SIGINT/SIGTERM, a callback, or the end of a shorter run,
and ends with exactly the weights of an uninterrupted run. A loss that becomes NaN or
infinite stops the loop (status "diverged") without touching the saved checkpoints.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
import zlib
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .data import (channel_stats, normalize, num_batches, random_crop, random_erasing,
                   random_hflip)
from .data.transforms import check_normalization
from . import workspace
from .layers.activation import seed_dropout
from .layers.normalization import BatchNorm1D, BatchNorm2D
from .distributed import BatchSplit, Replicas, Solo, as_group, cpus_per_rank
from .distributed import fingerprint
from .parallel import BatchParallel, blas_threads
from .losses import CrossEntropyLoss, softmax
from .schedules import Schedule
from .trace import record
from .validate import check_bool, check_integer, check_number, check_rng

METRICS_FILE = "metrics.jsonl"
OTHER_RANK_STOPPED = "another rank was asked to stop"
BEST_FILE = "best.npz"
LAST_FILE = "last.npz"


class History(list):
    """The per-epoch metrics dicts of a run (a list), plus how the run ended.

    Attributes:
        status: "completed", "interrupted" (signal or callback; resumable) or "diverged".
        message: a sentence saying what happened (empty when completed).
        normalization: the (mean, std) float32 arrays the inputs were normalised with.
        checkpoint: path of the last checkpoint written (None without a run_dir).
    """

    status = "completed"
    message = ""
    signal: int | None = None  # the signal number that interrupted the run, if one did
    normalization: tuple[np.ndarray, np.ndarray] | None = None
    checkpoint: Path | None = None


@dataclass
class BatchInfo:
    """What a callback sees after each optimizer step."""

    epoch: int       # 0-based epoch of this batch
    batch: int       # 0-based index of the batch in its epoch
    step: int        # optimizer steps taken so far (after this batch)
    loss: float      # this batch's mean loss
    accuracy: float  # this batch's accuracy
    lr: float        # the learning rate of this step


@dataclass
class Progress:
    """Where the run stands: JSON-ready, stored in checkpoints as metadata["progress"]."""

    epoch: int = 0            # current epoch (the next to run when batch == 0)
    batch: int = 0            # batches of `epoch` already done
    step: int = 0             # optimizer steps taken
    loss_sum: float = 0.0     # Σ batch loss · batch size over the done batches of `epoch`
    correct: int = 0          # correct predictions over the done batches of `epoch`
    seen: int = 0             # images of `epoch` done
    seconds: float = 0.0      # time spent in `epoch` so far
    best_score: float | None = None  # best monitored accuracy so far


# --------------------------------------------------------------------------- batches


def _check_images(images, what: str,
                  expected: str = "be uint8 images of shape (N, C, H, W)") -> np.ndarray:
    """`images` if a non-empty uint8 array (N, C, H, W); TypeError / ValueError otherwise."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise TypeError(f"{what} must {expected}, got "
                        f"{getattr(images, 'dtype', type(images).__name__)} of shape "
                        f"{getattr(images, 'shape', None)}")
    if images.size == 0:
        raise ValueError(f"{what} is empty (images of shape {images.shape})")
    return images


def _check_data(data, what: str):
    images = _check_images(getattr(data, "images", None), what,
                           "have uint8 images of shape (N, C, H, W) (an ImageDataset)")
    labels = getattr(data, "labels", None)
    if not isinstance(labels, np.ndarray) or labels.shape != images.shape[:1]:
        raise ValueError(f"{what} needs one label per image, got {len(images)} images and "
                         f"labels of shape {getattr(labels, 'shape', None)}")
    return images, labels


def prepare_batch(images_uint8: np.ndarray, normalization, dtype, *, rng=None,
                  crop_padding: int = 0, flip: bool = False, erasing: float = 0.0,
                  split: BatchSplit | None = None) -> np.ndarray:
    """uint8 batch (N, C, H, W) -> normalised `dtype` batch, augmented first when rng is given.

    Augmentation works on the uint8 pixels, as torchvision's RandomCrop and RandomHorizontalFlip
    before ToTensor and Normalize: the crop's padding is black, not the mean. Then, with
    probability `erasing` per image, `random_erasing` fills a rectangle with the mean pixel
    (rounded), which normalises to about 0: torchvision's RandomErasing(value=0) after
    Normalize. With a `split`, the images are the part of a global batch it says, and are
    augmented as they would be in the whole batch (the draws are made for the whole batch).
    """
    if rng is not None:
        start, total = (0, None) if split is None else (split.start, split.total)
        if crop_padding:
            images_uint8 = random_crop(images_uint8, crop_padding, rng, start=start, total=total)
        if flip:
            images_uint8 = random_hflip(images_uint8, rng, start=start, total=total)
        if erasing:
            mean_pixel = np.clip(np.round(255 * np.asarray(normalization[0], float)), 0, 255)
            images_uint8 = random_erasing(images_uint8, rng, erasing, value=mean_pixel,
                                          start=start, total=total)
    mean, std = normalization
    return normalize(images_uint8, mean, std).astype(dtype, copy=False)


def _check_one_image_batch(model, images: np.ndarray, batch_size: int) -> None:
    """In a batch of one image, a BatchNorm (fit trains them all) gets one value per channel
    where its maps are 1x1 (always, for BatchNorm1D): no variance. Say so before the first
    step, rather than when the epoch's last batch comes (ResNet-18 shrinks 28x28 images to
    1x1)."""
    smallest = min(batch_size, len(images) % batch_size or batch_size)
    norms = {id(module) for module in model.modules()
             if isinstance(module, (BatchNorm1D, BatchNorm2D))}
    if smallest > 1 or not norms:
        return
    one_image = np.zeros((1, *images.shape[1:]), model.dtype or np.float32)
    for call in record(model, one_image).calls:
        if id(call.module) in norms and call.output[0, 0].size == 1:
            if batch_size == 1:
                where = "batches of 1 image"
            elif len(images) == 1:
                where = "a single training image"
            else:
                where = (f"{len(images)} training images in batches of {batch_size} end "
                         f"with a batch of 1")
            raise ValueError(
                f"BatchNorm {call.name!r} gets one value per channel from each image (its "
                f"input per image: {call.inputs[0].shape[1:]}), and {where}: that batch's "
                f"variance is undefined; change --limit or --batch-size (the number of "
                f"images or batch_size)")


def _batch_slices(count: int, batch_size: int):
    return [slice(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def evaluate(model, data, normalization, *, batch_size: int = 500, group=None) -> dict:
    """Mean cross-entropy and accuracy of `model` on `data` (no augmentation, no update).

    Args:
        data: an ImageDataset (uint8 images (N, C, H, W), labels (N,)).
        normalization: (mean, std) of the training set, per channel (History.normalization,
            or a checkpoint's).
        group: the ranks of a distributed run (`cnnumpy.distributed.Group`): each rank
            evaluates its share of `data` and the sums are added over the ranks.
    Returns {"loss": float, "accuracy": float, "count": N}.
    """
    images, labels = _check_data(data, "data")
    normalization = check_normalization(normalization, images.shape[1])
    check_integer("batch_size", batch_size, 1)
    count = len(images)
    group = Solo() if group is None else group
    images, labels = images[group.part(count)], labels[group.part(count)]
    criterion = CrossEntropyLoss()
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    try:
        for part in _batch_slices(len(images), batch_size):
            x = prepare_batch(images[part], normalization, model.dtype)
            logits = model.forward(x, keep_cache=False)
            loss_sum += float(criterion.forward(logits, labels[part])) * len(x)
            correct += int((logits.argmax(axis=1) == labels[part]).sum())
    finally:
        model.train(was_training)
        workspace.release()  # the evaluation batches' memory is not training's
    loss_sum, correct = group.sum(np.array([loss_sum, correct], dtype=np.float64),
                                  "the sums of an evaluation")
    return {"loss": float(loss_sum) / count, "accuracy": int(correct) / count, "count": count}


def predict_proba(model, images_uint8: np.ndarray, normalization, *,
                  batch_size: int = 500) -> np.ndarray:
    """Class probabilities (N, K) for uint8 images (N, C, H, W), normalised like training."""
    images_uint8 = _check_images(images_uint8, "images_uint8")
    normalization = check_normalization(normalization, images_uint8.shape[1])
    check_integer("batch_size", batch_size, 1)
    was_training = model.training
    model.eval()
    try:
        return np.concatenate([
            softmax(model.forward(prepare_batch(images_uint8[part], normalization, model.dtype),
                                  keep_cache=False))
            for part in _batch_slices(len(images_uint8), batch_size)
        ])
    finally:
        model.train(was_training)
        workspace.release()


# --------------------------------------------------------------------------- signals


class StopRequest:
    """Turns SIGINT / SIGTERM into a request to stop after the current batch (main thread only).

    A second signal while stopping raises KeyboardInterrupt at once. Handlers are restored on
    exit of the `with` block.
    """

    def __init__(self, install: bool = True, signals=(signal.SIGINT, signal.SIGTERM)):
        self.install = install and threading.current_thread() is threading.main_thread()
        self.signals = tuple(signals)
        self.signal: int | None = None
        self.reason = ""
        self._previous: dict[int, object] = {}

    def request(self, reason: str) -> None:
        self.reason = self.reason or reason

    def __bool__(self) -> bool:
        return bool(self.reason)

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        self.request(f"received {signal.Signals(signum).name}")

    def __enter__(self):
        if self.install:
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


# --------------------------------------------------------------------------- the loop


def _progress_bar(enabled: bool, total: int, initial: int, description: str):
    """A tqdm bar when wanted and installed (the `progress` extra), else None."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=description, unit="batch", leave=True,
                dynamic_ncols=True, file=sys.stderr)


def _write_metrics(run_dir: Path, history: list, append: bool) -> None:
    """Append the last epoch's line to metrics.jsonl, or rewrite the file from `history`."""
    path = run_dir / METRICS_FILE
    lines = history[-1:] if append else history
    with open(path, "a" if append else "w", encoding="utf-8") as log:
        for entry in lines:
            log.write(json.dumps(entry) + "\n")


@dataclass(frozen=True)
class LoopSettings:
    """How `fit` goes through the data: a resumed run must have the same (but `epochs`)."""

    epochs: int
    batch_size: int
    augment: bool
    crop_padding: int
    flip: bool
    label_smoothing: float
    random_erasing: float = 0.0


class RunStopped(Exception):
    """Ends a run before its last epoch: `status` "interrupted" (resumable) or "diverged",
    and a sentence saying what happened."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Trainer:
    """The state of one fit call (the function `fit` is its public face)."""

    def __init__(self, model, *, optimizer, schedule, train_data, val_data,
                 loop: LoopSettings, rng, run_dir, normalization, metadata, workers, processes,
                 group):
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.batch_parallel = BatchParallel(model, workers, processes=processes)
        self.group, self.replicas = group, Replicas(model, group)  # ranks of a distributed run
        self.train_images, self.train_labels = _check_data(train_data, "train_data")
        self.val_data = val_data
        if val_data is not None:
            _check_data(val_data, "val_data")
        self.loop = loop
        self.epochs, self.batch_size = loop.epochs, loop.batch_size
        self.criterion = CrossEntropyLoss(loop.label_smoothing)
        self.rng = rng
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.writes = self.run_dir is not None and group.rank == 0  # rank 0 writes the files
        self.normalization = normalization
        self.class_names = list(getattr(train_data, "class_names", []) or [])
        self.dataset_name = getattr(train_data, "name", None)
        self.metadata = dict(metadata or {})
        self.progress = Progress()
        self.history = History()
        self.order: np.ndarray | None = None  # this epoch's permutation
        # the step whose state the ranks last compared and made whole, and saved in last.npz
        # with a run folder: at the end of every epoch
        self.settled_step: int | None = None

    @property
    def settings(self) -> dict:
        """The loop settings a resumed run must share with the original."""
        return {**{key: value for key, value in asdict(self.loop).items() if key != "epochs"},
                "train_size": len(self.train_images)}

    def description(self) -> dict:
        """What every rank of a distributed run must share, compared when it starts."""
        mean, std = self.normalization
        rng_state = json.dumps(self.rng.bit_generator.state, sort_keys=True).encode()
        val = self.val_data
        return {
            "fit": self.settings, "epochs": self.epochs, "model": self.model.config(),
            "dtype": str(self.model.dtype),
            "optimizer": {key: value for key, value in self.optimizer.state_dict().items()
                          if key != "arrays"},
            "schedule": None if self.schedule is None else self.schedule.config(),
            "train images": fingerprint(self.train_images),
            "train labels": fingerprint(self.train_labels),
            "validation images": None if val is None else fingerprint(val.images),
            "validation labels": None if val is None else fingerprint(val.labels),
            "normalization": [mean.tolist(), std.tolist()],
            "random generator": f"state crc32 {zlib.crc32(rng_state):08x}",
            "position": {key: getattr(self.progress, key) for key in ("epoch", "batch", "step")},
            "metadata": self.metadata,
        }

    # ------------------------------------------------------------------ checkpoints

    def save(self, name: str) -> Path:
        mean, std = self.normalization
        arrays = {"normalization/mean": mean, "normalization/std": std}
        if self.progress.batch:
            arrays["epoch_order"] = self.order
        metadata = {
            **self.metadata,
            "class_names": self.class_names, "dataset": self.dataset_name,
            "schedule": None if self.schedule is None else self.schedule.config(),
            "progress": asdict(self.progress), "epochs": self.epochs, "fit": self.settings,
            "rng_state": self.rng.bit_generator.state, "history": list(self.history),
            "ranks": self.group.size,
        }
        return save_checkpoint(self.run_dir / name, self.model, optimizer=self.optimizer,
                               arrays=arrays, metadata=metadata)

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from a checkpoint written by `save` (weights, optimizer, RNG, position)."""
        checkpoint.require("progress", "rng_state", "history", "fit")
        checkpoint.require_arrays("normalization/mean", "normalization/std")
        stored = checkpoint.metadata["fit"]
        if stored != self.settings:
            raise checkpoint.error(f"was written with settings {stored}, this run has "
                                   f"{self.settings}")
        checkpoint.load_into(self.model)
        checkpoint.restore_optimizer(self.optimizer)
        self.normalization = (checkpoint.arrays["normalization/mean"],
                              checkpoint.arrays["normalization/std"])
        try:
            self.rng.bit_generator.state = checkpoint.metadata["rng_state"]
            self.progress = Progress(**checkpoint.metadata["progress"])
        except (TypeError, ValueError, KeyError) as err:
            raise checkpoint.error(f"cannot restore the run's position: {err}") from None
        self.history.extend(checkpoint.metadata["history"])
        if self.progress.batch:
            checkpoint.require_arrays("epoch_order")
            self.order = checkpoint.arrays["epoch_order"]

    def saved(self, name: str) -> Path:
        """The path of checkpoint `name` of the run folder, written by rank 0 (the only rank
        when not distributed); a rank that times out later says it stays loadable. Every
        rank's optimizer state must be whole (`Replicas.whole_optimizer`) before."""
        path = self.save(name) if self.writes else self.run_dir / name
        if name == LAST_FILE:
            self.group.note = f"The last checkpoint, {path}, is whole: resume from it."
        return path

    # ------------------------------------------------------------------ training

    def run(self, stop: StopRequest, callbacks, epoch_callbacks, show_progress: bool,
            verbose: bool) -> History:
        """Train epoch after epoch until the last, or until a stop (a signal or callback: the
        History says "interrupted"; a loss that is not finite: "diverged")."""
        try:
            self.replicas.start(self.description)  # distributed: compared, rank 0's weights
            if self.writes:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                _write_metrics(self.run_dir, self.history, append=False)
            self.model.train()
            self.train_epochs(stop, callbacks, epoch_callbacks, show_progress, verbose)
            self.replicas.whole_optimizer(self.optimizer)  # distributed: each rank kept a part
            self.batch_parallel.release_replicas()  # they hold the model's (shared) arrays
            self.replicas.finish(free=True)  # every rank is here: the shared memory goes
        finally:
            self.batch_parallel.close()  # worker processes, if any
            self.replicas.finish()  # distributed: the model's arrays are its own again
        self.history.normalization = self.normalization
        return self.history

    def train_epochs(self, stop: StopRequest, callbacks, epoch_callbacks, show_progress: bool,
                     verbose: bool) -> None:
        """Epochs until the last, or until a stop, whose status and message the History gets."""
        try:
            while self.progress.epoch < self.epochs:
                if self.stopping(stop):  # asked for in the last batch of the previous epoch,
                    raise self.interrupted(stop.reason or OTHER_RANK_STOPPED)  # or after it
                self.run_epoch(stop, callbacks, show_progress)
                entry = self.end_epoch(verbose)
                if any([callback(dict(entry)) for callback in epoch_callbacks]):
                    stop.request("an epoch callback asked to stop")
        except RunStopped as stopped:
            self.history.status, self.history.message = stopped.status, stopped.message

    def stopping(self, stop: StopRequest) -> bool:
        """Whether a stop was requested, here or (distributed) on any rank: every rank stops
        after the same batch."""
        return self.group.any(bool(stop), "the agreement on stopping")

    def run_epoch(self, stop: StopRequest, callbacks, show_progress: bool) -> None:
        """Train the rest of the current epoch (RunStopped when the run stops inside it)."""
        p = self.progress
        if p.batch == 0:
            self.order = self.rng.permutation(len(self.train_images))
        slices = _batch_slices(len(self.train_images), self.batch_size)
        bar = _progress_bar(show_progress, len(slices), p.batch,
                            f"epoch {p.epoch + 1}/{self.epochs}")
        started = time.perf_counter() - p.seconds
        try:
            for part in slices[p.batch:]:
                info = self.train_batch(self.order[part])
                p.seconds = time.perf_counter() - started
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{p.loss_sum / p.seen:.4f}",
                                    acc=f"{p.correct / p.seen:.4f}",
                                    img_s=f"{p.seen / max(p.seconds, 1e-9):.0f}", refresh=False)
                for callback in callbacks:
                    if callback(info):
                        stop.request("a callback asked to stop")
                if self.stopping(stop) and p.batch < len(slices):
                    raise self.interrupted(stop.reason or OTHER_RANK_STOPPED)
        finally:
            if bar is not None:
                bar.close()

    def train_batch(self, indices: np.ndarray) -> BatchInfo:
        """One optimizer step on the images at `indices`; RunStopped ("diverged") if the loss
        is not finite (before the step: the weights and saved checkpoints stay as they were).

        Distributed, this rank takes its part of the batch, the ranks' gradients, losses
        and correct counts are summed (`Replicas.reduce`), and the ranks share out the step
        (each updates its `Replicas.part` of the parameters, `Replicas.share` exchanges
        them)."""
        p = self.progress
        total, split = len(indices), self.group.split(len(indices))
        indices = indices[self.group.part(total)]
        rng = self.rng if self.loop.augment else None
        x = prepare_batch(self.train_images[indices], self.normalization, self.model.dtype,
                          rng=rng, crop_padding=self.loop.crop_padding, flip=self.loop.flip,
                          erasing=self.loop.random_erasing, split=split)
        y = self.train_labels[indices]
        lr = self.schedule.apply(self.optimizer, p.step) if self.schedule else self.optimizer.lr
        loss, correct = math.nan, 0
        if len(y):  # a rank's part is empty when the batch has fewer images than ranks
            loss, logits = self.batch_parallel.forward_backward(x, y, self.criterion, split=split)
            loss, correct = float(loss), int((logits.argmax(axis=1) == y).sum())
        loss, correct = self.replicas.reduce(loss, correct, len(y), total)
        if not math.isfinite(loss):
            raise RunStopped(
                "diverged", f"the training loss became {loss} at epoch {p.epoch + 1}, batch "
                f"{p.batch + 1} (step {p.step + 1}): stopped; "
                + ("the saved checkpoints are untouched; " if self.run_dir else "")
                + "try a lower learning rate")
        self.optimizer.step(self.replicas.part)  # distributed: this rank's part of the update
        self.replicas.share()
        p.loss_sum += loss * total
        p.correct += correct
        p.seen += total
        p.batch += 1
        p.step += 1
        self.replicas.step_done(p.step)
        return BatchInfo(p.epoch, p.batch - 1, p.step, loss, correct / total, lr)

    def interrupted(self, reason: str) -> RunStopped:
        """Save the last checkpoint (with a run folder; not again when the epoch that just
        ended wrote it) and return the RunStopped ("interrupted") to raise."""
        p = self.progress
        where = (f"after epoch {p.epoch}" if p.batch == 0 else
                 f"at epoch {p.epoch + 1}, batch {p.batch}/"
                 f"{num_batches(len(self.train_images), self.batch_size)}")
        if self.settled_step != p.step:  # every rank, with a run folder or not: collectives
            self.replicas.check(p.step)
            self.replicas.whole_optimizer(self.optimizer)
            if self.run_dir is not None:
                self.history.checkpoint = self.saved(LAST_FILE)
        if self.run_dir is None:
            return RunStopped("interrupted", f"{reason}: stopped {where}")
        return RunStopped("interrupted", f"{reason}: stopped {where}; saved "
                                         f"{self.history.checkpoint} to resume from")

    def end_epoch(self, verbose: bool) -> dict:
        """Validate, log, checkpoint and move to the next epoch; the epoch's metrics entry.
        RunStopped ("diverged") if the validation loss is not finite."""
        p = self.progress
        entry = {"epoch": p.epoch + 1, "lr": self.optimizer.lr,
                 "train_loss": p.loss_sum / p.seen, "train_acc": p.correct / p.seen}
        started = time.perf_counter()
        if self.val_data is not None:
            metrics = evaluate(self.model, self.val_data, self.normalization, group=self.group)
            if not math.isfinite(metrics["loss"]):
                raise RunStopped(
                    "diverged", f"the validation loss became {metrics['loss']} after epoch "
                                f"{p.epoch + 1}: stopped; try a lower learning rate")
            entry.update(val_loss=metrics["loss"], val_acc=metrics["accuracy"])
        entry["seconds"] = p.seconds + (time.perf_counter() - started)
        self.history.append(entry)
        score = entry.get("val_acc", entry["train_acc"])
        improved = p.best_score is None or score > p.best_score
        if improved:
            p.best_score = score
        p.epoch, p.batch, p.loss_sum, p.correct, p.seen, p.seconds = p.epoch + 1, 0, 0.0, 0, 0, 0.0
        self.replicas.check(p.step)  # every rank, with a run folder or not: collectives
        self.replicas.whole_optimizer(self.optimizer)
        self.settled_step = p.step
        if self.writes:
            _write_metrics(self.run_dir, self.history, append=True)
        if self.run_dir is not None:
            self.history.checkpoint = self.saved(LAST_FILE)
            if improved:
                self.saved(BEST_FILE)
        if verbose:
            print(format_entry(entry), file=sys.stderr, flush=True)
        return entry


def format_entry(entry: dict) -> str:
    """One metrics line for people: "epoch 3/15 | lr 0.0412 | train_loss 0.3124 | ..."."""
    return " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                      for k, v in entry.items())


def fit(model, train_data, val_data=None, *, optimizer, epochs: int, batch_size: int = 128,
        schedule=None, augment: bool = True, crop_padding: int = 2, flip: bool = True,
        random_erasing: float = 0.0, label_smoothing: float = 0.0, rng: np.random.Generator | None = None,
        run_dir=None, normalization=None, resume=None,
        callbacks: tuple[Callable[[BatchInfo], bool | None], ...] = (),
        epoch_callbacks: tuple[Callable[[dict], bool | None], ...] = (),
        handle_signals: bool = True, progress: bool = True, verbose: bool = True,
        metadata: dict | None = None, workers: int | None = None,
        processes: bool | None = None, communicator=None) -> History:
    """Train `model` on `train_data` for `epochs` epochs; returns the per-epoch History.

    Args:
        model: a cnnumpy model with `config()` (SimpleCNN, or one from `cnnumpy.registry`).
        train_data, val_data: ImageDatasets (uint8 images (N, C, H, W), int labels (N,));
            val_data may be None (then the best checkpoint follows the training accuracy).
        optimizer: an optimizer of `cnnumpy.optim` built on `model`.
        epochs: total number of epochs (a resumed run counts the epochs already done).
        batch_size: images per optimizer step (the last batch of an epoch may be smaller;
            a ValueError before the first step when that leaves a BatchNorm one value per
            channel, as after a global pool).
        schedule: a `cnnumpy.schedules.Schedule` setting the lr at every step, or None.
        augment: random crop (`crop_padding` black pixels), horizontal flip (`flip`) and,
            with probability `random_erasing` per image, a rectangle filled with the mean
            pixel (`cnnumpy.data.random_erasing`; default 0: none) in training batches;
            validation batches are never augmented.
        label_smoothing: ε of the cross-entropy (default 0).
        rng: the Generator for shuffling and augmentation (default: a fresh, unseeded one).
        run_dir: folder for metrics.jsonl, last.npz, best.npz (None: nothing written).
        normalization: (mean, std) per channel; default: `channel_stats` of train_data.
        resume: a checkpoint (path or `Checkpoint`) written by a fit with the same settings:
            restores the weights, optimizer, RNG state and position, then continues.
        callbacks: functions called with a BatchInfo after every step; a true return value
            stops the run after that batch, as a signal does.
        epoch_callbacks: functions called with each epoch's metrics (the History entry) once
            it is logged and checkpointed; a true return value stops the run there (early
            stopping), resumable as after a signal.
        handle_signals: turn SIGINT / SIGTERM into a clean stop with a resumable last.npz.
        progress: show a tqdm bar (when tqdm is installed); verbose: print one line per epoch.
        metadata: JSON-ready entries added to every checkpoint (e.g. the command line).
        workers: parts each batch is split into, one thread and one model replica each
            (`cnnumpy.parallel.BatchParallel`); default the available CPUs. Gradients are
            those of the whole batch up to the order of float sums, so a run is repeatable
            with the same number of workers. Distributed, the default is this machine's CPUs
            shared by its ranks, and BLAS is held to as many threads.
        processes: run the parts after the first in worker processes forked from this one
            rather than in threads (`BatchParallel(processes=True)`: the same results, without
            the threads' waits for the interpreter lock; see
            `benchmarks/threads_vs_processes.py`). Default: processes on Linux, threads
            elsewhere and with a communicator (every rank's parts are threads).
        communicator: train on the ranks of an MPI job (data parallelism, see
            `cnnumpy.distributed`): an mpi4py communicator such as MPI.COMM_WORLD, or a
            `cnnumpy.distributed.Group` (to set its time limit and checksum period). Every
            rank calls fit with the same arguments, data and seeded rng (checked at the
            start); each takes its part of every batch of `batch_size` images, the gradients
            are summed, and the run follows a single process with the same batch size up to
            the order of float sums. Rank 0 writes the files and prints; validation is shared
            out. A signal to any rank (SIGINT, SIGTERM or SIGUSR1) stops every rank after the
            same batch. Each rank updates its part of the parameters (the ranks then exchange
            them, or, on one machine, share one buffer of them: `Group(node_memory=...)`):
            after a step, a rank's gradients are the global batch's only in that part
            (`Replicas.part`), elsewhere its own images' share.

    Returns:
        A History: a list of {"epoch", "lr", "train_loss", "train_acc", ["val_loss",
        "val_acc",] "seconds"} with `status` "completed", "interrupted" or "diverged".
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if getattr(optimizer, "model", None) is not model:
        raise ValueError("optimizer must be built on the model being trained "
                         "(e.g. SGD(model, lr=...))")
    rng = check_rng("rng", np.random.default_rng() if rng is None else rng)
    if schedule is not None and not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a cnnumpy.schedules.Schedule (e.g. OneCycle(...)) "
                        f"or None, got {schedule!r:.80}")
    check_bool("augment", augment)
    check_bool("flip", flip)
    check_integer("crop_padding", crop_padding, 0)
    random_erasing = check_number("random_erasing", random_erasing, 0.0, 1.0)
    if random_erasing and not augment:
        raise ValueError(f"random_erasing={random_erasing} is an augmentation: it needs "
                         f"augment=True")
    if run_dir is not None and not str(run_dir):
        raise ValueError("run_dir must name a folder (or be None), got an empty path")
    for name, functions in (("callbacks", callbacks), ("epoch_callbacks", epoch_callbacks)):
        if not all(callable(function) for function in functions):
            raise TypeError(f"{name} must be a tuple of functions, got {functions!r:.80}")
    images = _check_data(train_data, "train_data")[0]
    if normalization is None:
        normalization = channel_stats(images)
    normalization = check_normalization(normalization, images.shape[1])
    if resume is None:  # a resumed run takes its Dropout streams from the checkpoint
        seed_dropout(model, rng)
    group = as_group(communicator)
    distributed = group.size > 1
    if distributed and workers is None:
        workers = cpus_per_rank(group)
    if processes is None:
        processes = communicator is None  # never fork inside an MPI job, even of one rank
    elif check_bool("processes", processes) and distributed:
        raise ValueError("processes=True does not combine with a distributed run: each rank "
                         "splits its part of a batch over threads")
    if distributed and any(hasattr(m, "running_mean") for m in model.modules()):
        # BatchNorm sums its statistics over every rank, so every rank must hold a part
        tail = len(images) % batch_size
        if min(batch_size, tail or batch_size) < group.size:
            raise ValueError(
                f"with BatchNorm, every batch must give each of the {group.size} ranks at least "
                f"one image, but {len(images)} training images in batches of {batch_size} end "
                f"with a batch of {tail}; change --limit or --batch-size")
    _check_one_image_batch(model, images, batch_size)
    loop = LoopSettings(epochs, batch_size, augment, crop_padding, flip, label_smoothing,
                        random_erasing)
    run = Trainer(model, optimizer=optimizer, schedule=schedule, train_data=train_data,
                  val_data=val_data, loop=loop, rng=rng, run_dir=run_dir,
                  normalization=normalization, metadata=metadata, workers=workers,
                  processes=processes, group=group)
    if resume is not None:
        run.restore(resume if isinstance(resume, Checkpoint) else load_checkpoint(resume))
    # Open MPI's mpirun forwards SIGUSR1 to the ranks as it is; SIGINT and SIGTERM it turns
    # into SIGTERM followed by SIGKILL a fraction of a second later (see the README).
    signals = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGUSR1,) if distributed else ())
    verbose = verbose and group.rank == 0
    with StopRequest(handle_signals, signals) as stop, \
            blas_threads(cpus_per_rank(group)) if distributed else nullcontext():
        history = run.run(stop, callbacks, epoch_callbacks, progress and group.rank == 0,
                          verbose)
    history.signal = stop.signal
    if verbose and history.message:
        print(history.message, file=sys.stderr, flush=True)
    return history
