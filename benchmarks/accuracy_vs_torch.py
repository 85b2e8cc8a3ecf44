"""Test accuracy and seconds per epoch of the default recipe: cnnumpy against PyTorch.

    python benchmarks/accuracy_vs_torch.py [--model simplecnn|resnet20|...] [--epochs N]
                                           [--limit N] [--only cnnumpy|torch]
                                           [--init uniform|he] [--same-init]
                                           [--random-erasing P] [--state DIR]

Both train --model (default SimpleCNN: conv 32, pool, conv 64, pool, fc 512, fc 10) on
Fashion-MNIST with the recipe of `cnnumpy train --model NAME`: SGD with Nesterov momentum 0.9
and weight decay 5e-4, PyTorch's OneCycleLR peaking at the model's lr (momentum cycled
0.95-0.85-0.95), batch 128, random crop (pad 2) and horizontal flip, the model's label
smoothing, random erasing and epochs (for resnet20: lr 0.1, label smoothing 0.1, random
erasing 0.5 (`cnnumpy.data.random_erasing`, the mean pixel), 30 epochs; --random-erasing P and
the other options change them), inputs
normalised with the training set's mean and std. Models other than SimpleCNN run in PyTorch
as `torch_mirror.mirror` of the cnnumpy model: the same architecture from the same initial
weights (torchvision's initialisation), with PyTorch's own layers. The batches (order,
augmentation, normalisation) come from the same NumPy code and seed for both; only the model,
loss, optimizer and schedule differ by framework. cnnumpy initialises with --init (default
uniform, as the recipe: PyTorch's own default distribution); PyTorch keeps its default
initialisation unless --same-init copies cnnumpy's initial weights into it (with --init he,
that measures the recipe from He's initialisation in both). PyTorch runs when importable
(`pip install torch==2.13.0`). Prints one row per framework, and a line per PyTorch epoch.

PyTorch's run can be spread over several sittings: with --state DIR it saves its model,
optimizer, schedule, the batches' generator and its epoch times to DIR after every epoch
(torch.save; read back with torch.load(weights_only=True), which loads tensors and plain
values only), and the same command with the same DIR continues from the last saved epoch.
(cnnumpy's own runs resume with `cnnumpy train --resume`.)
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

import cnnumpy as cn
from cnnumpy.cli import MODEL_RECIPES, RECIPE, input_padding
from cnnumpy.data import channel_stats, iterate_batches, load_dataset, num_batches
from cnnumpy.train import prepare_batch


def cnnumpy_run(model, train, test, args):
    optimizer = cn.SGD(model, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = cn.OneCycle(args.lr, args.epochs * num_batches(train, args.batch_size))
    history = cn.fit(model, train, optimizer=optimizer, epochs=args.epochs,
                     batch_size=args.batch_size, schedule=schedule,
                     label_smoothing=args.label_smoothing, random_erasing=args.random_erasing,
                     rng=np.random.default_rng(args.seed), progress=args.progress)
    metrics = cn.evaluate(model, test, history.normalization)
    return metrics["accuracy"], float(np.mean([entry["seconds"] for entry in history]))


def torch_model(torch, cnnumpy_model, same_init):
    if not isinstance(cnnumpy_model, cn.SimpleCNN):  # the same architecture and weights
        from torch_mirror import mirror

        return mirror(cnnumpy_model)
    nn = torch.nn
    channels, height, width = cnnumpy_model.input_shape
    model = nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64 * (height // 4) * (width // 4), 512), nn.ReLU(), nn.Linear(512, 10))
    if same_init:
        params = cnnumpy_model.parameters()
        with torch.no_grad():
            for index, name in ((0, "conv1"), (3, "conv2"), (7, "fc1"), (9, "fc2")):
                model[index].weight.copy_(torch.from_numpy(params[f"{name}.W"]))
                model[index].bias.copy_(torch.from_numpy(params[f"{name}.b"]))
    return model


def torch_run(torch, model, train, test, args):
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * num_batches(train, args.batch_size))
    normalization = channel_stats(train.images)
    rng = np.random.default_rng(args.seed)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    seconds = []
    state = Path(args.state) if args.state else None
    if state and (state / "progress.json").exists():
        progress = json.loads((state / "progress.json").read_text())
        # a state saved before --random-erasing existed had none
        stored, asked = {"random_erasing": 0.0, **progress["settings"]}, _settings(args)
        if stored != asked:
            differ = ", ".join(f"{key} {stored.get(key)!r} (asked {asked.get(key)!r})"
                               for key in sorted(stored.keys() | asked.keys())
                               if stored.get(key) != asked.get(key))
            raise SystemExit(f"{state} holds a run with other settings: {differ}")
        saved = torch.load(state / "torch_state.pt", weights_only=True)
        if saved["epoch"] != len(progress["seconds"]):
            raise SystemExit(f"{state}: the saved tensors are of epoch {saved['epoch']}, the "
                             f"progress file of epoch {len(progress['seconds'])}")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        rng.bit_generator.state = progress["rng"]
        seconds = progress["seconds"]
        print(f"PyTorch: resumed from {state} after epoch {len(seconds)}", flush=True)
    for epoch in range(len(seconds) + 1, args.epochs + 1):
        start = time.perf_counter()
        model.train()
        total_loss, steps = 0.0, 0
        for indices in iterate_batches(train, args.batch_size, rng):
            x = prepare_batch(train.images[indices], normalization, np.float32, rng=rng,
                              crop_padding=2, flip=True, erasing=args.random_erasing)
            loss = loss_fn(model(torch.from_numpy(x)), torch.from_numpy(train.labels[indices]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss, steps = total_loss + loss.item(), steps + 1
        seconds.append(time.perf_counter() - start)
        print(f"PyTorch epoch {epoch}/{args.epochs}: train loss {total_loss / steps:.4f}, "
              f"{seconds[-1]:.0f} s", flush=True)
        if state:
            _save_state(torch, state, model, optimizer, scheduler, rng, seconds, args)
    model.eval()
    with torch.no_grad():
        predictions = np.concatenate([
            model(torch.from_numpy(prepare_batch(test.images[start:start + 500], normalization,
                                                 np.float32))).argmax(dim=1).numpy()
            for start in range(0, len(test), 500)])
    return float(np.mean(predictions == test.labels)), float(np.mean(seconds))


def _settings(args) -> dict:
    """What a saved PyTorch run must share with the command that continues it."""
    keys = ("model", "epochs", "limit", "batch_size", "lr", "label_smoothing", "random_erasing",
            "seed", "init", "same_init")
    return {key: getattr(args, key) for key in keys}


def _save_state(torch, state, model, optimizer, scheduler, rng, seconds, args) -> None:
    """The run after an epoch, written beside the old state and then renamed over it (the
    progress file last: it names the epoch the tensors belong to)."""
    state.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": len(seconds), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, state / "torch_state.pt.new")
    (state / "torch_state.pt.new").replace(state / "torch_state.pt")
    progress = {"settings": _settings(args), "rng": rng.bit_generator.state, "seconds": seconds}
    (state / "progress.json.new").write_text(json.dumps(progress))
    (state / "progress.json.new").replace(state / "progress.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODEL_RECIPES), default="simplecnn")
    parser.add_argument("--epochs", type=int, help="default: the model's recipe")
    parser.add_argument("--limit", type=int, help="use only the first N training images")
    parser.add_argument("--test-limit", type=int, help="use only the first N test images")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the model's)")
    parser.add_argument("--label-smoothing", type=float,
                        help="label smoothing (default: the model's)")
    parser.add_argument("--random-erasing", type=float, metavar="P",
                        help="probability of random erasing per training image, the "
                             "augmentation of `cnnumpy train --random-erasing` (default: the "
                             "model's: 0.5 for the CIFAR ResNets, 0 for the others)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir")
    parser.add_argument("--only", choices=("cnnumpy", "torch"))
    parser.add_argument("--init", choices=("uniform", "he"), default="uniform",
                        help="cnnumpy's initialisation (default uniform, as `cnnumpy train`)")
    parser.add_argument("--same-init", action="store_true",
                        help="start PyTorch from cnnumpy's initial weights")
    parser.add_argument("--progress", action="store_true", help="cnnumpy's progress bar")
    parser.add_argument("--state", help="PyTorch: save each epoch to this folder and continue "
                                        "from what it holds")
    args = parser.parse_args()
    recipe = {**RECIPE, "lr": 0.05, **MODEL_RECIPES[args.model]}
    for key in ("epochs", "lr", "label_smoothing", "random_erasing"):
        if getattr(args, key) is None:
            setattr(args, key, recipe[key])

    train = load_dataset("fashion-mnist", "train", data_dir=args.data_dir)
    test = load_dataset("fashion-mnist", "test", data_dir=args.data_dir)
    if args.limit:
        train = train.subset(slice(0, args.limit))
    if args.test_limit:
        test = test.subset(slice(0, args.test_limit))
    config = {"name": args.model, "input_shape": list(train.sample_shape),
              "num_classes": train.num_classes}
    if args.model == "simplecnn":
        config["init"] = args.init
    padding = input_padding(args.model, train.sample_shape)
    if padding:
        config["input_padding"] = padding
    model = cn.build_model(config, rng=np.random.default_rng(args.seed))
    rows = []
    if args.only != "cnnumpy":
        try:
            import torch
        except ImportError:
            print("PyTorch is not installed (pip install torch==2.13.0): cnnumpy only")
        else:
            torch.manual_seed(args.seed)
            reference = torch_model(torch, model, args.same_init)
            rows.append((f"PyTorch {torch.__version__}", *torch_run(torch, reference, train,
                                                                     test, args)))
    if args.only != "torch":
        rows.append((f"cnnumpy {cn.__version__}", *cnnumpy_run(model, train, test, args)))
    print(f"{args.model} on Fashion-MNIST, {len(train)} training / {len(test)} test images, "
          f"{args.epochs} epochs, lr {args.lr}, label smoothing {args.label_smoothing}"
          f"{f', random erasing {args.random_erasing}' if args.random_erasing else ''}")
    print(f"{'framework':<24}{'test accuracy':>15}{'s/epoch':>10}")
    for name, accuracy, seconds in rows:
        print(f"{name:<24}{accuracy:>15.4f}{seconds:>10.1f}")


if __name__ == "__main__":
    main()
