"""Compiler and linter speed, measured in one run on this machine.

1. `qcompile recipes/wan22_i2v.yaml -o plan.json` wall time / `python -c pass` wall time, both as fresh
   processes from the same interpreter, median of N runs each (goal: at most 3x).
2. Lint throughput over 1,000 generated recipes in one process on one core (goal: at least 1,000/s).

Usage: python benchmarks/compile_speed.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qcompiler.compiler import compile_source  # noqa: E402

RECIPE = REPO / "recipes" / "wan22_i2v.yaml"


def median_wall(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def generated_recipes(count: int) -> list[str]:
    """Recipes that differ in step count, rules and selectors, all valid (a realistic linting load)."""
    base = RECIPE.read_text(encoding="utf-8").split("rules:")[0]
    recipes = []
    for index in range(count):
        steps = 4 + index % 47
        first, last = index % 3, 39 - index % 5
        recipes.append(
            base.replace("num_inference_steps: 4 ", f"num_inference_steps: {steps} ")
            + "rules:\n"
            + f'  - name: edge-steps-{index}\n    steps: "first {1 + index % 20}%, last 1"\n    precision: native\n'
            + f'  - name: blocks-{index}\n    layers: "0-{first}, {last}-"\n    precision: native\n'
            + f'  - name: strided-{index}\n    layers: "all/{2 + index % 7}"\n    steps: "{steps // 2}"\n    precision: native\n'
        )
    return recipes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--recipes", type=int, default=1000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, children inherit it

    qcompile = [sys.executable, "-m", "qcompiler.entry"]  # what the `qcompile` console script runs
    with tempfile.TemporaryDirectory() as tmp:
        baseline = median_wall([sys.executable, "-c", "pass"], args.runs)
        compiled = median_wall([*qcompile, str(RECIPE), "-o", str(Path(tmp) / "plan.json")], args.runs)

    recipes = generated_recipes(args.recipes)
    start = time.perf_counter()
    # What `qcompile lint` does per recipe: parse, validate, resolve, report; no plan file is built.
    findings = [compile_source(text, name=f"gen{i}.yaml", build_plan=False).diagnostics for i, text in enumerate(recipes)]
    elapsed = time.perf_counter() - start
    errors = sum(d.severity == "error" for found in findings for d in found)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, pinned to one core")
    print(f"python -c pass:                      {baseline * 1000:7.1f} ms (median of {args.runs})")
    print(f"qcompile wan22_i2v.yaml -o plan.json {compiled * 1000:7.1f} ms (median of {args.runs})")
    print(f"ratio:                               {compiled / baseline:7.2f}x   (goal <= 3x)")
    print(f"lint throughput: {len(recipes)} generated recipes in {elapsed:.2f} s = {len(recipes) / elapsed:,.0f} recipes/s"
          f"   (goal >= 1,000/s; {errors} errors found)")


if __name__ == "__main__":
    main()
