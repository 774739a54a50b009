"""Compiler and linter speed, measured in one run on this machine.

1. `qcompile recipes/wan22_i2v.yaml -o plan.json` wall time / `python -c "import yaml, jsonschema, click"` wall
   time, both as fresh processes from the same interpreter, run alternately N times each; medians and minimums
   (goal: at most 1.5x). The baseline is the libraries the compiler is built on, so the ratio measures our code.
2. Lint throughput over 1,000 generated recipes in one process on one core (goal: at least 1,000/s).
3. A 2,000-rule x 1,000-step recipe compiled in one process (goal: under 2 s).

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

from qcompiler.compile.compiler import compile_source  # noqa: E402

RECIPE = REPO / "recipes" / "wan22_i2v.yaml"


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    return time.perf_counter() - start


def interleaved_walls(first: list[str], second: list[str], runs: int) -> tuple[list[float], list[float]]:
    """Alternate the two commands so that load from other processes hits both alike."""
    times_first, times_second = [], []
    for _ in range(runs):
        times_first.append(wall(first))
        times_second.append(wall(second))
    return times_first, times_second


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


def big_recipe(rules: int = 2000, steps: int = 1000) -> str:
    """A recipe with `rules` overlapping rules over `steps` steps, every rule changing something."""
    base = RECIPE.read_text(encoding="utf-8").split("rules:")[0]
    base = base.replace("num_inference_steps: 4 ", f"num_inference_steps: {steps} ")
    body = "".join(
        f'  - {{name: r{i}, precision: {"native" if i % 2 else "fp8"}, steps: "{i % (steps - 3)}-{i % (steps - 3) + 3}, all/7", '
        f'layers: "{i % 37}-"}}\n' for i in range(rules))
    return base + "rules:\n" + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--recipes", type=int, default=1000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, children inherit it

    qcompile = [sys.executable, "-m", "qcompiler.cli.main"]  # what the `qcompile` console script runs
    baseline_command = [sys.executable, "-c", "import yaml, jsonschema, click"]
    with tempfile.TemporaryDirectory() as tmp:
        wall([*qcompile, str(RECIPE), "-o", str(Path(tmp) / "plan.json")])  # warm the file cache and .pyc files
        baselines, compiles = interleaved_walls(
            baseline_command, [*qcompile, str(RECIPE), "-o", str(Path(tmp) / "plan.json")], args.runs
        )
    baseline, compiled = statistics.median(baselines), statistics.median(compiles)

    recipes = generated_recipes(args.recipes)
    start = time.perf_counter()
    # What `qcompile lint` does per recipe: parse, validate, resolve, report; no plan file is built.
    findings = [compile_source(text, name=f"gen{i}.yaml", build_plan=False).diagnostics for i, text in enumerate(recipes)]
    elapsed = time.perf_counter() - start
    errors = sum(d.severity == "error" for found in findings for d in found)

    big = big_recipe()
    start = time.perf_counter()
    big_result = compile_source(big, name="big.yaml")
    big_elapsed = time.perf_counter() - start
    assert big_result.plan is not None, big_result.errors[:1]

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, pinned to one core")
    print(f"import yaml, jsonschema, click:      {baseline * 1000:7.1f} ms median, {min(baselines) * 1000:6.1f} ms min "
          f"({args.runs} runs, interleaved)")
    print(f"qcompile wan22_i2v.yaml -o plan.json {compiled * 1000:7.1f} ms median, {min(compiles) * 1000:6.1f} ms min")
    print(f"ratio:                               {compiled / baseline:7.2f}x of medians, "
          f"{min(compiles) / min(baselines):.2f}x of minimums   (goal <= 1.5x)")
    print(f"lint throughput: {len(recipes)} generated recipes in {elapsed:.2f} s = {len(recipes) / elapsed:,.0f} recipes/s"
          f"   (goal >= 1,000/s; {errors} errors found)")
    print(f"2,000 rules x 1,000 steps: compiled in {big_elapsed:.2f} s   (goal < 2 s)")


if __name__ == "__main__":
    main()
