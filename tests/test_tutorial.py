"""docs/tutorial.md runs: its python blocks in order in one namespace, each `text` block right
after a python block equal to what that block printed.

A python block preceded by the line `<!-- needs: fashion-mnist -->` reads the real data set;
when it is not installed those blocks (and only those) are left out and the test reports a
skip after running all the others. `<!-- needs: torch -->` does the same for blocks that
need PyTorch, safetensors, onnx and onnxruntime (the interop part).
"""

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorial.md"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
NEEDS_DATA = "<!-- needs: fashion-mnist -->"
NEEDS_TORCH = "<!-- needs: torch -->"
INTEROP_PACKAGES = ("torch", "safetensors", "onnx", "onnxruntime")
FENCE = re.compile(r"^```(\w*)\s*$")


def parse_blocks(text: str) -> list[dict]:
    """Fenced blocks as dicts: language, code, first line number, needs_data, needs_torch,
    follows_code.

    follows_code: only blank lines separate this block from the python block before it.
    """
    blocks, lines = [], text.splitlines()
    index, previous_end, previous_language, marker_line = 0, None, None, None
    marker = None
    while index < len(lines):
        if lines[index].strip() in (NEEDS_DATA, NEEDS_TORCH):
            marker_line, marker = index, lines[index].strip()
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        end = next((i for i in range(index + 1, len(lines)) if lines[i].strip() == "```"), None)
        if end is None:
            raise ValueError(f"{TUTORIAL.name}, line {index + 1}: unclosed code block")
        between = lines[previous_end + 1: index] if previous_end is not None else ["x"]
        blocks.append({
            "language": match.group(1), "code": "\n".join(lines[index + 1: end]),
            "line": index + 2,
            "needs_data": marker == NEEDS_DATA and marker_line is not None and all(
                not line.strip() for line in lines[marker_line + 1: index]),
            "needs_torch": marker == NEEDS_TORCH and marker_line is not None and all(
                not line.strip() for line in lines[marker_line + 1: index]),
            "follows_code": previous_language == "python"
            and all(not line.strip() for line in between),
        })
        previous_end, previous_language, marker_line, marker = end, match.group(1), None, None
        index = end + 1
    return blocks


def test_parse_blocks():
    text = "\n".join(["intro", "```python", "print(1)", "```", "", "```text", "1", "```",
                      "prose", "```text", "orphan", "```", NEEDS_DATA, "```python", "x = 2",
                      "```"])
    blocks = parse_blocks(text)
    assert [(b["language"], b["code"], b["follows_code"], b["needs_data"]) for b in blocks] == [
        ("python", "print(1)", False, False), ("text", "1", True, False),
        ("text", "orphan", False, False), ("python", "x = 2", False, True)]
    assert blocks[0]["line"] == 3


def test_tutorial_runs_and_prints_what_it_shows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files the tutorial writes land here
    blocks = parse_blocks(TUTORIAL.read_text(encoding="utf-8"))
    assert sum(block["language"] == "python" for block in blocks) >= 10
    have_data = FASHION_MNIST.is_dir()
    have_torch = all(importlib.util.find_spec(name) for name in INTEROP_PACKAGES)
    namespace = {"__name__": "tutorial"}
    printed, left_out = None, []
    for block in blocks:
        where = f"docs/tutorial.md, block at line {block['line']}"
        if block["language"] == "text" and block["follows_code"]:
            if printed is not None:  # None: its python block was left out
                assert printed.rstrip("\n") == block["code"], f"{where}: output differs"
            continue
        assert block["language"] != "text", f"{where}: a text block must follow a python block"
        if block["language"] != "python":
            printed = None
            continue
        if (block["needs_data"] and not have_data) or (block["needs_torch"] and not have_torch):
            printed = None
            left_out.append(block["line"])
            continue
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            exec(compile(block["code"], where, "exec"), namespace)
        printed = output.getvalue()
    if left_out:
        pytest.skip(f"Fashion-MNIST (in {FASHION_MNIST}) or {', '.join(INTEROP_PACKAGES)} "
                    f"not installed: left out the blocks at lines {left_out} (all others ran)")
