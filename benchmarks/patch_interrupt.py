"""Interrupted `qcompile patch` / `--remove`: N real subprocesses killed at random times, counting what each left.

Each run is sent SIGKILL, SIGTERM or SIGINT (seeded random choice) after a seeded random delay, 80% of them timed
from the moment the first file of ours appears in the folder (so most land inside the few milliseconds that change
files), the rest from the start. After each: the folder must load as runtime.load reads it (stock or fully
patched; tests/export/patch_interrupts.py:loaded_state), and the next command (patch or --remove, at random) must
succeed and leave the folder byte for byte as before or as fully patched, with nothing of ours left behind.

Usage: python benchmarks/patch_interrupt.py [--kills 300] [--seed 0] [--pipeline DIR]
(DIR: a saved tiny pipeline, e.g. from runtime.tiny.save_tiny_pipeline; only its JSON files are copied. Without it
one is built.) Prints the counts per outcome; exit status 1 when any failure was counted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from tests.export.conftest import RECIPE  # noqa: E402
from tests.export.patch_interrupts import random_interrupt_loop  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=300, help="interrupted runs (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pipeline", type=Path, help="a saved tiny Wan2.2 I2V pipeline folder to copy")
    args = parser.parse_args()
    from qcompiler import compile_recipe_text
    from qcompiler.plan.format import write_plan

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = args.pipeline
        if source is None:
            from runtime import tiny

            source = work / "built"
            tiny.save_tiny_pipeline(tiny.build_tiny_pipeline("wan2.2-i2v-a14b"), source)
        folder = Path(shutil.copytree(source, work / "pipe", ignore=shutil.ignore_patterns("*.safetensors", "*.bin")))
        plan = work / "plan.json"
        write_plan(compile_recipe_text(RECIPE, name="edge.yaml", variant="tiny"), plan)
        started = time.perf_counter()
        counts = random_interrupt_loop(folder, plan, args.kills, args.seed, log=print)
        elapsed = time.perf_counter() - started
    seconds = counts.pop("_seconds", 0)
    print(f"{args.kills} interrupted runs (seed {args.seed}) in {elapsed:.0f} s ({seconds / max(args.kills, 1):.2f} s each)")
    for outcome, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {count:5d}  {outcome}")
    failures = sum(v for k, v in counts.items() if k.startswith("failure"))
    print(f"failures: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
