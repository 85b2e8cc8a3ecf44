"""Throw bad inputs at cnnumpy and count what happens to each: a clear error, an obscure one,
silent acceptance, or a hang. Never run by the test suite (a few minutes on 2 cores).

    python benchmarks/fuzz_inputs.py                       # the code of this tree
    python benchmarks/fuzz_inputs.py --src /tmp/old/src    # another tree, e.g. an older commit:
        git archive df90d67 | tar -x -C /tmp/old

Classes of input (tests/corruptions.py makes the files): IDX data files, checkpoints, images
for predict, command-line arguments, public API arguments. Every case is run through the
command line (`cnnumpy.cli.main` in a worker process) or the API (a line of Python), in worker
processes with a 4 GiB address-space limit and a time limit per case.

Outcomes:
  clear    a ValueError / TypeError / FileNotFoundError (or the CLI's one-line error, or an
           argparse usage error) whose message names the file, field or argument, and no
           raw message of NumPy, zip, JSON or Python internals
  obscure  any other error: another exception type, a traceback, a raw message, or a message
           that does not name what is wrong
  silent   no error: exit status 0 for bad input, a wrong reading of a valid but unusual
           input, or `--json` output that is not valid JSON
  correct  a valid but unusual input (an EXIF-rotated photo, a float TIFF) read right
  hang     no answer within the time limit (or the worker died)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import queue
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import corruptions as cc  # noqa: E402

RAW = ("Traceback", "could not convert", "invalid literal", "unsupported operand", "NoneType",
       "has no attribute", "list indices", "index out of range", "cannot reshape",
       "Unable to allocate", "negative dimensions", "not subscriptable", "not iterable",
       "allow_pickle", "Expecting value", "File is not a zip", "Bad magic number",
       "Compressed file ended", "unhashable", "KeyError", "object of type", "cannot unpack",
       "Error -3", "CRC", "codec can't decode", "maximum recursion", "buffer is smaller",
       "Cannot parse header", "out of bounds", "EOF:", "broadcast", "operands could not")
TIME_LIMIT = 90.0
TRAIN_SETTINGS = {"dataset": "fashion-mnist", "data_dir": None, "model": "simplecnn",
                  "init": "uniform", "epochs": 2, "batch_size": 16, "lr": 0.05,
                  "optimizer": "sgd", "momentum": 0.9, "nesterov": True,
                  "schedule": "onecycle", "weight_decay": 5e-4, "label_smoothing": 0.0,
                  "augment": True, "val_split": 0.0, "seed": 0, "limit": 32}


# --------------------------------------------------------------------------- the worker


def worker(cases_file: str, start: int) -> None:
    """Run cases[start:] one by one, printing one JSON line per case."""
    import cnnumpy as cn
    from cnnumpy.cli import main as cli_main
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    cases = json.loads(Path(cases_file).read_text())
    for index in range(start, len(cases)):
        case = cases[index]
        print(json.dumps({"start": index}), flush=True)
        os.chdir(case["dir"])
        outcome = run_case(case, cn, cli_main)
        print(json.dumps({"index": index, **outcome}), flush=True)


def run_case(case, cn, cli_main) -> dict:
    if case["via"] == "cli":
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = cli_main(case["argv"])
        except SystemExit as exit_:
            status = exit_.code
        except BaseException as exc:  # escaped main: a traceback
            return {"status": "raised", "type": type(exc).__name__, "message": str(exc)[:300]}
        return {"status": status, "stdout": out.getvalue()[-2000:],
                "stderr": err.getvalue()[-2000:]}
    namespace = {"cn": cn, "np": np, "Path": Path}
    try:
        exec(case["code"], namespace)
    except BaseException as exc:
        return {"status": "raised", "type": type(exc).__name__, "message": str(exc)[:300]}
    return {"status": "returned", "ok": namespace.get("ok", False)}


def classify(case: dict, outcome: dict) -> str:
    names = case["names"]
    if outcome.get("hang"):
        return "hang"
    if case["via"] == "api":
        if outcome["status"] == "returned":
            return "correct" if case.get("valid") and outcome["ok"] else "silent"
        message, kind = outcome["message"], outcome["type"]
        good_type = kind in ("ValueError", "TypeError", "FileNotFoundError",
                             "DatasetNotFoundError")
    else:
        if outcome["status"] == "raised":
            return "obscure"
        if outcome["status"] == 0:
            if "--json" in case["argv"]:
                try:
                    json.loads(outcome["stdout"].strip().splitlines()[-1],
                               parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
                except (ValueError, IndexError):
                    return "silent"
            return "correct" if case.get("valid") else "silent"
        stderr = outcome["stderr"].strip()
        lines = stderr.splitlines()
        first = lines[0] if lines else ""
        good_type = outcome["status"] in (1, 2) and (
            first.startswith("cnnumpy: error: ") or "error: argument" in stderr)
        message = stderr if outcome["status"] == 2 else first
    if not good_type or any(raw in message for raw in RAW):
        return "obscure"
    return "clear" if any(name in message for name in names) else "obscure"


# --------------------------------------------------------------------------- the cases


def setup(root: Path, src: Path) -> None:
    """A 28x28 Fashion-MNIST-format data set, a finished run and a run stopped mid-epoch,
    made by the code under test."""
    script = f"""
import numpy as np, cnnumpy as cn, json
from pathlib import Path
from cnnumpy.data.idx import write_idx_split
from cnnumpy.data import load_dataset
root = Path({str(root)!r})
rng = np.random.default_rng(0)
for split, count in (("train", 48), ("test", 16)):
    labels = rng.integers(0, 10, count)
    images = (rng.integers(0, 30, (count, 28, 28)) + labels[:, None, None] * 22).astype(np.uint8)
    write_idx_split(root / "data" / "fashion-mnist", split, images, labels)
settings = {TRAIN_SETTINGS!r}
settings["data_dir"] = str(root / "data")
train = load_dataset("fashion-mnist", "train", data_dir=root / "data").subset(slice(0, 32))
for name, stop in (("stopped", 1), ("finished", None)):
    rng = np.random.default_rng(0)
    model = cn.build_model({{"name": "SimpleCNN", "input_shape": [1, 28, 28], "num_classes": 10,
                            "init": "uniform"}}, rng=rng)
    opt = cn.SGD(model, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    cn.fit(model, train, optimizer=opt, epochs=2, batch_size=16, rng=rng,
           schedule=cn.OneCycle(0.05, total_steps=4), run_dir=root / name,
           callbacks=[(lambda info: info.step == stop)], progress=False, verbose=False,
           metadata={{"train_settings": settings}}, workers=1)
np.save(root / "image.npy", np.full((28, 28), 100, np.uint8))
"""
    subprocess.run([sys.executable, "-c", script], check=True, env=_env(src))


def _env(src: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1"}


class Cases:
    def __init__(self, root: Path):
        self.root, self.cases = root, []

    def folder(self, files: dict[str, bytes] | None = None, copy=()) -> Path:
        folder = self.root / "cases" / str(len(self.cases))
        folder.mkdir(parents=True)
        for source in copy:
            target = folder / Path(source).name
            (shutil.copytree if Path(source).is_dir() else shutil.copy)(source, target)
        for name, content in (files or {}).items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(content)
        return folder

    def add(self, klass, name, via, names, folder, argv=None, code=None, valid=False):
        self.cases.append({"class": klass, "name": name, "via": via, "names": names,
                           "dir": str(folder), "argv": argv, "code": code, "valid": valid})


def idx_cases(c: Cases) -> None:
    data = c.root / "data" / "fashion-mnist"
    good = (data / "t10k-images-idx3-ubyte.gz").read_bytes()
    import gzip
    raw_good = gzip.decompress(good)
    variants = {name: content for name, content in cc.idx_image_cases().items()}
    labels = gzip.decompress((data / "t10k-labels-idx1-ubyte.gz").read_bytes())
    label_variants = {
        "label out of range": labels[:-1] + b"\x0c",
        "fewer labels than images": cc.idx_bytes((15,), labels[8:-1]),
        "labels with the image magic": b"\x00\x00\x08\x03" + labels[4:],
        "zero labels": cc.idx_bytes((0,)),
    }
    rng = np.random.default_rng(0)
    for k in range(12):
        mutated = bytearray(raw_good)
        at = int(rng.integers(0, 16))
        mutated[at] = (mutated[at] + int(rng.integers(1, 256))) % 256
        variants[f"header byte {at} changed ({k})"] = bytes(mutated)
    for k in range(6):
        variants[f"truncated at {k}"] = raw_good[: int(rng.integers(0, len(raw_good)))]
    bomb = cc.gzip_bomb((16, 28, 28), inflated=1 << 30)
    entries = [(f"images: {n}", "t10k-images-idx3-ubyte", v) for n, v in variants.items()]
    entries += [(f"labels: {n}", "t10k-labels-idx1-ubyte", v) for n, v in label_variants.items()]
    for name, base, content in entries:
        for gz in (False, True):
            file = base + (".gz" if gz else "")
            files = {file: gzip.compress(content, mtime=0) if gz else content}
            count = _declared_images(content) if "images" in base else None
            if count is not None:  # labels to match: the images alone must be the fault
                files["t10k-labels-idx1-ubyte"] = cc.idx_bytes((count,))
            add_data_case(c, f"{name}{' (gz)' if gz else ''}", files, file)
    add_data_case(c, "gzip bomb: 16x28x28 declared, 1 GiB inflated",
                  {"t10k-images-idx3-ubyte.gz": bomb}, "t10k-images-idx3-ubyte.gz")
    small = cc.idx_bytes((16, 20, 20))
    folder = data_folder(c, {"t10k-images-idx3-ubyte": small})
    c.add("idx", "test images 20x20, training 28x28 (train)", "cli", ["t10k-images", "20x20"],
          folder, argv=["train", "--data-dir", "data", "--limit", "16", "--epochs", "1",
                        "--out", "run", "--no-progress"])


def _declared_images(content: bytes) -> int | None:
    """N of an image file's header (N, H, W), when it is a small number."""
    if len(content) < 16 or content[3] != 3:
        return None
    count = int.from_bytes(content[4:8], "big")
    return count if count <= 1000 else None


def data_folder(c: Cases, files: dict[str, bytes]) -> Path:
    source = c.root / "data" / "fashion-mnist"
    folder = c.folder()
    target = folder / "data" / "fashion-mnist"
    target.mkdir(parents=True)
    replaced = {Path(name).name.split(".")[0] for name in files}
    for path in source.iterdir():
        if path.name.split(".")[0] not in replaced:
            shutil.copy(path, target / path.name)
    for name, content in files.items():
        (target / name).write_bytes(content)
    shutil.copy(c.root / "finished" / "last.npz", folder / "ck.npz")
    return folder


def add_data_case(c, name, files, file):
    folder = data_folder(c, files)
    c.add("idx", name, "cli", [file], folder,
          argv=["evaluate", "ck.npz", "--data-dir", "data", "--json"])
    c.add("idx", name, "api", [file], folder,
          code="cn.data.load_dataset('fashion-mnist', 'test', data_dir='data', download=False)")


def checkpoint_cases(c: Cases) -> None:
    finished, stopped = c.root / "finished" / "last.npz", c.root / "stopped" / "last.npz"
    content = finished.read_bytes()
    use = ("ck = cn.load_checkpoint('ck.npz'); m = ck.build_model(); "
           "t = cn.data.load_dataset('fashion-mnist', 'test', data_dir='data'); "
           "r = cn.evaluate(m, t, (ck.arrays['normalization/mean'], "
           "ck.arrays['normalization/std'])); import json; json.dumps(r, allow_nan=False); "
           "ck.metadata['class_names'][9]")
    def add(name, body: bytes, resume=False, valid=False):
        folder = c.folder()
        shutil.copytree(c.root / "data", folder / "data")
        if resume:
            (folder / "run").mkdir()
            (folder / "run" / "last.npz").write_bytes(body)
            c.add("checkpoint", name, "cli", ["last.npz"], folder, valid=valid,
                  argv=["train", "--resume", "run", "--data-dir", "data", "--no-progress"])
            return
        (folder / "ck.npz").write_bytes(body)
        shutil.copy(c.root / "image.npy", folder / "image.npy")
        c.add("checkpoint", name, "cli", ["ck.npz"], folder, valid=valid,
              argv=["evaluate", "ck.npz", "--data-dir", "data", "--json"])
        c.add("checkpoint", name, "cli", ["ck.npz"], folder, valid=valid,
              argv=["predict", "ck.npz", "image.npy", "--json"])
        c.add("checkpoint", name, "api", ["ck.npz"], folder, code=use + "\nok = True",
              valid=valid)

    for name, body in cc.zip_layer_corruptions(content).items():
        add(f"zip: {name}", body)
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3))
    add("a .npy renamed .npz", buffer.getvalue())
    add("deflate bomb (512 MiB declared)", cc.deflate_bomb_npz(512 << 20))
    metadata, arrays = cc.read_npz(finished)
    for entry in ("model/fc2.W", "model/conv1.b", "optimizer/momentum_buffer/fc1.b",
                  "extra/normalization/std", "extra/normalization/mean"):
        for kind, array in cc.array_variants(arrays[entry]).items():
            add(f"array {entry}: {kind}", _npz(metadata, {**arrays, entry: array}))
    add("deep nesting", _npz(None, arrays, raw=json.dumps(metadata)[:-1].encode()
                             + b', "x": ' + b"[" * 50000 + b"]" * 50000 + b"}"))
    add("model: unknown key", _npz(cc.set_path(metadata, "model.depth", 3), arrays))
    add("model: huge input shape", _npz(cc.set_path(metadata, "model.input_shape",
                                                    [1, 100000, 100000]), arrays))
    add("model: 10^12 classes", _npz(cc.set_path(metadata, "model.num_classes", 10**12), arrays))
    add("class names: 2 of 10", _npz(cc.set_path(metadata, "class_names", ["a", "b"]), arrays))
    rng = np.random.default_rng(1)
    run_fields = ("progress", "fit", "rng_state", "history", "train_settings", "epochs",
                  "optimizer", "schedule")
    for name, tree, array_set, resume in (("finished", metadata, arrays, False),
                                          ("stopped", *cc.read_npz(stopped), True)):
        for path in cc.leaf_paths(tree):
            if path.split(".")[0] in ("cnnumpy_version", "format") or ".seconds" in path:
                continue
            if resume != (path.split(".")[0] in run_fields):
                continue
            for value in _odd_values(_get(tree, path), rng):
                edited = cc.set_path(tree, path, value)
                add(f"{name}: {path} = {value!r}", _npz(edited, array_set), resume=resume,
                    valid=_legit(path, value))
    stopped_meta, stopped_arrays = cc.read_npz(stopped)
    order = stopped_arrays["extra/epoch_order"]
    for kind, replacement in (("repeated", np.zeros_like(order)), ("short", order[:-1]),
                              ("floats", order.astype(np.float64))):
        add(f"stopped: epoch_order {kind}",
            _npz(stopped_meta, {**stopped_arrays, "extra/epoch_order": replacement}), True)


def _legit(path: str, value) -> bool:
    """Edits that leave a valid checkpoint: no data set named (predict needs none), another
    seed, a schedule planned longer than the run (the stored schedule is a record; a resumed
    run is given its schedule)."""
    return ((path == "dataset" and value is None)
            or (path.endswith(".seed") and isinstance(value, int) and value >= 0)
            or (path == "schedule.total_steps" and value == 10**12))


def _get(tree, dotted):
    for part in dotted.split("."):
        tree = tree[int(part)] if isinstance(tree, list) else tree[part]
    return tree


def _odd_values(value, rng) -> list:
    """Two values of the wrong type or range for a field holding `value`."""
    if isinstance(value, bool):
        pool = ["yes", 2, None]
    elif isinstance(value, int):
        pool = [-1, 10**12, 2.5, "7", None, float("nan")]
    elif isinstance(value, float):
        pool = [float("nan"), float("inf"), -1.0, "0.1", None]
    elif isinstance(value, str):
        pool = [7, "", None, [value]]
    else:
        pool = [[1], {"a": 1}, -3]
    picks = rng.choice(len(pool), size=min(2, len(pool)), replace=False)
    return [pool[int(k)] for k in picks]


def _npz(metadata, arrays, raw: bytes | None = None) -> bytes:
    buffer = io.BytesIO()
    text = raw if raw is not None else json.dumps(metadata).encode()
    np.savez(buffer, **arrays, **{cc.METADATA_KEY: np.frombuffer(text, np.uint8)})
    return buffer.getvalue()


def image_cases(c: Cases) -> None:
    load = ("try:\n    from cnnumpy.data.images import load_images\n"
            "except ImportError:\n    from cnnumpy.cli import load_images\n")
    for name, body in cc.npy_image_cases().items():
        folder = c.folder({"input.npy": body}, copy=[c.root / "finished" / "last.npz"])
        c.add("image", f"npy: {name}", "cli", ["input.npy"], folder,
              argv=["predict", "last.npz", "input.npy", "--json"])
        c.add("image", f"npy: {name}", "api", ["input.npy"], folder,
              code=load + "load_images(['input.npy'], (1, 28, 28))")
    folder = c.folder(copy=[c.root / "finished" / "last.npz"])
    pictures = cc.picture_cases(folder)
    checks = {"only alpha": None, "float tiff in [0, 1]": "ok = bool((x == 204).all())"}
    for name, path in pictures.items():
        c.add("image", f"picture: {name}", "cli", [path.name], folder,
              argv=["predict", "last.npz", path.name, "--json"], valid=bool(checks.get(name)))
        check = checks.get(name)
        c.add("image", f"picture: {name}", "api", [path.name], folder,
              code=load + f"_, x = load_images([{path.name!r}], (1, 28, 28))\n" + (check or ""),
              valid=check is not None)
    from PIL import Image
    pixels = np.zeros((20, 28), np.uint8)
    pixels[:, :4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(folder / "rotated.png", exif=exif)
    c.add("image", "picture: EXIF orientation 6", "api", ["rotated.png"], folder, valid=True,
          code=load + "_, x = load_images(['rotated.png'], (1, 28, 20))\n"
                      "ok = bool(x[0, 0, :4].mean() > 200)")
    Image.fromarray(np.full((28, 28), 65535, np.uint16)).save(folder / "deep.png")
    c.add("image", "picture: 16-bit white", "api", ["deep.png"], folder, valid=True,
          code=load + "_, x = load_images(['deep.png'], (1, 28, 28))\nok = bool((x == 255).all())")


CLI_ARGUMENTS = [
    (["--lr", "inf"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "-1"], "--lr"),
    (["--weight-decay", "inf"], "--weight-decay"), (["--momentum", "nan"], "--momentum"),
    (["--momentum", "1.5"], "--momentum"), (["--label-smoothing", "2"], "--label-smoothing"),
    (["--label-smoothing", "nan"], "--label-smoothing"), (["--seed", "-1"], "--seed"),
    (["--seed", "1.5"], "--seed"), (["--out", ""], "--out"), (["--resume", ""], "--resume"),
    (["--data-dir", "nowhere"], "--data-dir"), (["--epochs", "0"], "--epochs"),
    (["--batch-size", "-3"], "--batch-size"), (["--limit", "0"], "--limit"),
    (["--val-split", "1"], "--val-split"), (["--val-split", "nan"], "--val-split"),
    (["--optimizer", "adam", "--momentum", "0.5"], "--momentum"),
    (["--model", "resnet"], "--model"),
]
CLI_OTHER = [
    (["summary", "--model", "simplecnn", "--input-shape", "3,100000,100000"], "--input-shape"),
    (["summary", "--model", "simplecnn", "--input-shape", "0,28,28"], "--input-shape"),
    (["summary", "--model", "simplecnn", "--input-shape", "3,4"], "--input-shape"),
    (["summary", "--model", "simplecnn", "--num-classes", "1000000000000"], "--num-classes"),
    (["summary", "--model", "simplecnn", "--num-classes", "0"], "--num-classes"),
    (["summary", "--model", "simplecnn", "--input-shape", "3,2,2"], "input_shape"),
    (["predict", "last.npz", "image.npy", "--top-k", "0"], "--top-k"),
    (["predict", "last.npz", "missing.png"], "missing.png"),
    (["evaluate", "last.npz", "--dataset", "cifar10", "--data-dir", "nowhere"], "--data-dir"),
    (["plot", "saliency", "last.npz", "test:abc"], "test:abc"),
    (["plot", "saliency", "last.npz", "test:-1"], "test:-1"),
    (["plot", "saliency", "last.npz", "image.npy", "--target", "99"], "target"),
    (["plot", "receptive-field", "last.npz", "image.npy", "--channel", "-1"], "map -1"),
    (["plot", "receptive-field", "last.npz", "image.npy", "--channel", "999"], "map 999"),
    (["plot", "receptive-field", "last.npz", "image.npy", "--unit", "99,99"], "unit (99, 99)"),
    (["plot", "receptive-field", "last.npz", "image.npy", "--layer", "nope"], "nope"),
    (["plot", "mistakes", "last.npz", "--count", "0"], "--count"),
    (["plot", "filters", "last.npz", "--out", ""], "--out"),
    (["plot", "curves", "nowhere"], "nowhere"),
]


def cli_cases(c: Cases) -> None:
    folder = c.folder(copy=[c.root / "finished" / "last.npz", c.root / "image.npy",
                            c.root / "data"])
    base = ["train", "--data-dir", "data", "--limit", "16", "--epochs", "1", "--no-progress"]
    for extra, name in CLI_ARGUMENTS:
        argv = base + extra + (["--out", "run"] if "--out" not in extra and
                               "--resume" not in extra else [])
        if "--data-dir" in extra:
            argv = argv[:1] + argv[3:]
        if "--resume" in extra:
            argv = [a for a in argv if a not in ("--limit", "16", "--epochs", "1")]
            argv = [argv[0], *argv[3:]]
        c.add("cli", " ".join(extra), "cli", [name], folder, argv=argv)
    for argv, name in CLI_OTHER:
        c.add("cli", " ".join(argv), "cli", [name], folder, argv=argv)


API_CASES = [
    ("cn.SGD(cn.Linear(2, 2), lr=float('inf'))", "lr"),
    ("cn.SGD(cn.Linear(2, 2), lr=0.1, weight_decay=float('inf'))", "weight_decay"),
    ("cn.SGD(cn.Linear(2, 2), lr=0.1, momentum=float('nan'))", "momentum"),
    ("cn.Adam(cn.Linear(2, 2), eps=float('inf'))", "eps"),
    ("cn.Adam(cn.Linear(2, 2), betas=(0.9, float('inf')))", "betas"),
    ("cn.AdamW(cn.Linear(2, 2), weight_decay=float('inf'))", "weight_decay"),
    ("o = cn.SGD(cn.Linear(2, 2), lr=0.1); o.lr = float('inf')", "lr"),
    ("cn.OneCycle(float('inf'), total_steps=10)", "max_lr"),
    ("cn.Constant(float('inf'))", "lr"),
    ("cn.StepDecay(0.1, step_size=2, gamma=float('inf'))", "gamma"),
    ("cn.WarmupCosine(0.1, total_steps=10, min_lr=float('inf'))", "min_lr"),
    ("cn.build_schedule({'name': ['onecycle']})", "schedule"),
    ("cn.SGD(cn.Linear(2, 2), lr=0.1).load_state_dict(None)", "state"),
    ("cn.SGD(cn.Linear(2, 2), lr=0.1).load_state_dict({})", "state"),
    ("cn.SGD(cn.Linear(2, 2), lr=0.1).load_state_dict({'name': 'SGD'})", "state"),
    ("o = cn.SGD(cn.Linear(2, 2), lr=0.1); s = o.state_dict(); s['hyperparameters']['lr'] = "
     "float('inf'); o.load_state_dict(s)", "lr"),
    ("o = cn.SGD(cn.Linear(2, 2), lr=0.1); s = o.state_dict(); s['hyperparameters']"
     "['nesterov'] = 'yes'; o.load_state_dict(s)", "nesterov"),
    ("o = cn.SGD(cn.Linear(2, 2), lr=0.1); s = o.state_dict(); s['steps'] = 'many'; "
     "o.load_state_dict(s)", "steps"),
    ("o = cn.SGD(cn.Linear(2, 2), lr=0.1, momentum=0.9); s = o.state_dict(); "
     "s['arrays'] = {'momentum_buffer/W': np.ones((2, 2), np.int64)}; o.load_state_dict(s)",
     "momentum_buffer/W"),
    ("o = cn.SGD(cn.Linear(2, 2), lr=0.1, momentum=0.9); s = o.state_dict(); "
     "s['arrays'] = {'momentum_buffer/W': np.full((2, 2), np.nan, np.float32)}; "
     "o.load_state_dict(s)", "momentum_buffer/W"),
    ("o = cn.SGD(cn.Linear(2, 2), lr=0.1); s = o.state_dict(); s['arrays'] = None; "
     "o.load_state_dict(s)", "arrays"),
]
FIT = ("d = cn.data.ImageDataset(np.zeros((8, 1, 8, 8), np.uint8), np.arange(8) % 2, "
       "('a', 'b'), 'toy'); m = cn.SimpleCNN((1, 8, 8), 2, rng=np.random.default_rng(0)); "
       "o = cn.SGD(m, lr=0.1)\n")
API_CASES += [
    (FIT + "cn.fit(m, d, optimizer=o, epochs=1, rng=42, progress=False, verbose=False)", "rng"),
    (FIT + "cn.fit(m, d, optimizer=o, epochs=1, schedule=0.1, progress=False, verbose=False)",
     "schedule"),
    (FIT + "cn.fit(m, d, optimizer=o, epochs=1, augment='no', progress=False, verbose=False)",
     "augment"),
    (FIT + "cn.fit(m, d, optimizer=o, epochs=1, normalization=(np.float32([np.nan]), "
           "np.float32([1])), progress=False, verbose=False)", "mean"),
    (FIT + "cn.fit(m, d, optimizer=o, epochs=1, crop_padding=-2, progress=False, "
           "verbose=False)", "crop_padding"),
    (FIT + "cn.evaluate(m, d, None)", "normalization"),
    (FIT + "cn.predict_proba(m, np.zeros((0, 1, 8, 8), np.uint8), (0.5, 0.2))", "images"),
    (FIT + "cn.predict_proba(m, np.zeros((2, 1, 8, 8)), (0.5, 0.2))", "images"),
    ("cn.data.ImageDataset(np.zeros((2, 1, 8, 8), np.uint8), np.zeros(2, np.int64), None, 'x')",
     "class_names"),
    ("cn.data.normalize(np.zeros((1, 1, 2, 2), np.uint8), [np.nan], [1.0])", "mean"),
    ("cn.build_model({'name': 'SimpleCNN', 'input_shape': [1, 8, 8], 'depth': 3})", "depth"),
    ("cn.build_model({'name': 7})", "7"),
    ("cn.data.load_dataset('imagenet')", "imagenet"),
    ("cn.data.iterate_batches(10, 0)", "batch_size"),
    ("cn.SimpleCNN((1, 100000, 100000), 10)", "weights of shape"),
    ("cn.SimpleCNN((1, 28, 28), 10**12)", "weights of shape"),
    ("cn.Linear(10**12, 10)", "weights of shape"),
    ("cn.SimpleCNN((1, 8, 8), 3, rng=42)", "rng"),
]


def api_cases(c: Cases) -> None:
    folder = c.folder()
    for code, name in API_CASES:
        c.add("api", code.splitlines()[-1][:70], "api", [name], folder, code=code)


# --------------------------------------------------------------------------- the runner


def run_all(cases: list[dict], src: Path, root: Path) -> list[dict]:
    cases_file = root / "cases.json"
    cases_file.write_text(json.dumps(cases))
    results: dict[int, dict] = {}
    start = 0
    while start < len(cases):
        process = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(cases_file), str(start)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env(src))
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in process.stdout] + [lines.put(None)],
                         daemon=True).start()
        current, started = start, time.monotonic()
        while True:
            try:
                line = lines.get(timeout=max(0.1, TIME_LIMIT - (time.monotonic() - started)))
            except queue.Empty:
                line = "timeout"
            if line is None or line == "timeout":
                process.kill()
                process.wait()
                results[current] = {"hang": True, "status": "hang"}
                start = current + 1
                break
            entry = json.loads(line)
            if "start" in entry:
                current, started = entry["start"], time.monotonic()
                continue
            results[entry.pop("index")] = entry
            if current == len(cases) - 1:
                process.wait()
                start = len(cases)
                break
    return [results[i] for i in range(len(cases))]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=HERE.parent / "src",
                        help="the cnnumpy source tree to test (default: this one)")
    parser.add_argument("--details", action="store_true",
                        help="list every case that is not clear (or correct)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cnnumpy-fuzz-"))
    try:
        setup(root, args.src.resolve())
        c = Cases(root)
        for make in (idx_cases, checkpoint_cases, image_cases, cli_cases, api_cases):
            make(c)
        began = time.monotonic()
        outcomes = run_all(c.cases, args.src.resolve(), root)
        table: dict[str, Counter] = defaultdict(Counter)
        for case, outcome in zip(c.cases, outcomes):
            verdict = classify(case, outcome)
            table[case["class"]][verdict] += 1
            if args.details and verdict not in ("clear", "correct"):
                detail = outcome.get("message") or outcome.get("stderr", "")[-300:] or \
                    outcome.get("stdout", "")[-200:]
                print(f"{verdict:8} {case['class']:10} {case['via']:3} {case['name'][:70]}\n"
                      f"         {detail.strip()[:300]!r}")
        kinds = ("clear", "obscure", "silent", "correct", "hang")
        print(f"{'class':12}{'cases':>7}" + "".join(f"{k:>9}" for k in kinds))
        total = Counter()
        for klass in ("idx", "checkpoint", "image", "cli", "api"):
            counts = table[klass]
            total.update(counts)
            print(f"{klass:12}{sum(counts.values()):>7}" + "".join(f"{counts[k]:>9}"
                                                                   for k in kinds))
        print(f"{'total':12}{sum(total.values()):>7}" + "".join(f"{total[k]:>9}" for k in kinds))
        print(f"({time.monotonic() - began:.0f} s; source {args.src})")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
