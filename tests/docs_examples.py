"""Command examples in the docs, generated from the commands themselves so they cannot drift.

A generated example is a fenced block right after the marker line

    <!-- generated-example -->
    ```
    $ qcompile show recipes/wan22_i2v.plan.json
    ...what that command prints...
    ```

The first line of the block is the command (run from the repository root, torch-free `qcompile` commands only);
the rest is its output (stdout, then stderr), and `[exit N]` as the last line when it exits non-zero.
tests/test_docs_examples.py fails when a block is stale; refresh every block with

    python -m tests.docs_examples --write
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- generated-example -->"
DOCUMENTS = ("README.md", "docs")
_BLOCK = re.compile(re.escape(MARKER) + r"\n```([a-z]*)\n\$ (?P<command>[^\n]+)\n(?P<output>.*?)```\n", re.DOTALL)


@dataclass(frozen=True)
class Example:
    path: Path
    command: str
    output: str  # as written in the document
    span: tuple[int, int]  # of the output inside the document's text


def documents() -> list[Path]:
    found = []
    for name in DOCUMENTS:
        path = ROOT / name
        found += sorted(path.glob("*.md")) if path.is_dir() else [path]
    return found


def examples(path: Path) -> list[Example]:
    text = path.read_text(encoding="utf-8")
    return [Example(path, m.group("command"), m.group("output"), m.span("output")) for m in _BLOCK.finditer(text)]


def run(command: str) -> str:
    """What `command` prints, as a generated example shows it."""
    argv = shlex.split(command)
    if argv[0] != "qcompile":
        raise ValueError(f"generated examples run qcompile commands only, not {argv[0]!r}")
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "qcompiler.cli.main", *argv[1:]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    if output and not output.endswith("\n"):
        output += "\n"
    if done.returncode:
        output += f"[exit {done.returncode}]\n"
    return output


def write_all() -> int:
    changed = 0
    for path in documents():
        text = path.read_text(encoding="utf-8")
        # Later spans first, so earlier offsets stay valid.
        for example in reversed(examples(path)):
            fresh = run(example.command)
            if fresh != example.output:
                start, end = example.span
                text = text[:start] + fresh + text[end:]
                changed += 1
        path.write_text(text, encoding="utf-8")
    return changed


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.docs_examples --write")
    print(f"{write_all()} example(s) refreshed")
