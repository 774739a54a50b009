"""Recipe and plan fuzzer: N mutants through the real readers, counting every outcome that is not allowed.

Each mutant is either a recipe (text mutated line-wise, byte-wise or structurally) compiled with the real
compiler, or a plan (a compiled plan's JSON mutated, then re-hashed so the hash check cannot hide a gap)
loaded with the real plan loader. Allowed outcomes: a plan (for recipes: and then the plan must load back),
or our own error. Counted as failures:

- crash:         any other exception (a traceback a user would see)
- hang:          one mutant taking longer than --hang-seconds
- silent accept: a plan mutant that loads although it is inconsistent (a table whose rows are not
                 steps x layers of 0/1, an expert schedule naming no component, a module without `{layer}`),
                 or a recipe mutant whose plan does not load back
- unlocated:     a recipe error without a line (when the text has lines) or a plan error without a JSON path /
                 line:column / file-level reason

Usage: python benchmarks/fuzz.py [--mutants 10000] [--seed 0]
Prints the counts and, for each kind of failure, the first example. Exit status 1 when any count is not 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qcompiler.compile.compiler import compile_source  # noqa: E402
from qcompiler.errors import PlanError  # noqa: E402
from qcompiler.plan.format import content_sha256, load_plan  # noqa: E402

RECIPE = (REPO / "recipes" / "wan22_i2v.yaml").read_text(encoding="utf-8")
TOKENS = ["yes", "no", "on", "10:20", "0x10", "010", "1_000", "~", "null", "true", "-1", "1e999", "4.0", ".nan",
          '"0-2"', '"first 15%"', '"last 1"', '"all/2"', '"\u0661-\u0663"', '"\uff11"', "[0, 1]", "[]", "{}", "&a x",
          "*a", "!!str x", "'", '"', "|", ">", ": :", "\t", "\x01", "\x7f", "\ufeff", "all", "fp8", "native", "self",
          "cross", "transformer", "transformer_2", "9" * 40, "9" * 5000, "[" * 3000, "-\n" * 50, "{a: [b, {c: d}]}",
          "é", "\u202e", "0-99999", "99999-", "first 0", "last 101%", "0-39/0", "5-2"]
PLAN_VALUES = [None, True, False, 0, -1, 1, 4.0, 2**64, 10**30, "", "0", "01\n", "012", "x", "{layer}", "blocks.attn",
               [], {}, [[]], {"a": 1}, "transformer_9", "self", 1e308]


def mutate_recipe(rng: random.Random) -> str:
    lines = RECIPE.splitlines()
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        index = rng.randrange(len(lines))
        if kind < 0.5:  # replace a value
            key, sep, _ = lines[index].partition(":")
            lines[index] = f"{key}: {rng.choice(TOKENS)}" if sep else rng.choice(TOKENS)
        elif kind < 0.7:  # insert a token anywhere in a line
            line = lines[index]
            at = rng.randint(0, len(line))
            lines[index] = line[:at] + rng.choice(TOKENS) + line[at:]
        elif kind < 0.8:  # delete or duplicate a line
            if rng.random() < 0.5:
                del lines[index]
            else:
                lines.insert(index, lines[index])
            if not lines:
                lines = [""]
        elif kind < 0.9:  # flip one character
            line = lines[index]
            if line:
                at = rng.randrange(len(line))
                lines[index] = line[:at] + chr(rng.randrange(0x20, 0x7f)) + line[at + 1:]
        else:  # re-indent
            lines[index] = " " * rng.randint(0, 6) + lines[index].lstrip()
    return "\n".join(lines) + "\n"


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


def mutate_plan(rng: random.Random, plan: dict) -> dict:
    data = json.loads(json.dumps(plan))
    for _ in range(rng.randint(1, 2)):
        paths = [p for p in _paths(data) if p]
        path = rng.choice(paths)
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        action = rng.random()
        if action < 0.6:
            parent[path[-1]] = rng.choice(PLAN_VALUES)
        elif action < 0.75 and isinstance(parent, dict):
            del parent[path[-1]]
        elif action < 0.9 and isinstance(parent[path[-1]], str) and parent[path[-1]]:
            text = parent[path[-1]]
            at = rng.randrange(len(text))
            parent[path[-1]] = text[:at] + rng.choice("01\n2 {}x") + text[at + 1:]
        elif isinstance(parent, list):
            parent.append(parent[path[-1]])
    if isinstance(data, dict):
        try:
            data["content_sha256"] = content_sha256(data)  # re-hash: the hash check must not be the only guard
        except (TypeError, ValueError):
            pass
    return data


def consistent(plan) -> str | None:
    """Why an accepted plan is inconsistent, or None: the checks a silent accept would slip past."""
    family = plan.data["family"]
    layers = {c["name"]: c["num_layers"] for c in family["components"]}
    steps = plan.num_inference_steps
    for component, by_kind in plan.data["tables"].items():
        for kind, rows in by_kind.items():
            if len(rows) != steps or any(len(r) != layers[component] or set(r) - {"0", "1"} for r in rows):
                return f"table {component}/{kind} is not {steps} x {layers[component]} of 0/1"
    if any(name not in layers for name in plan.expert_schedule) or len(plan.expert_schedule) != steps:
        return "expert_schedule inconsistent"
    if any("{layer}" not in spec["module"] for spec in family["attention_kinds"].values()):
        return "module template without {layer}"
    if not 0 <= plan.numerics["rotation_seed"] < 2**32:
        return "rotation seed out of range"
    return None


FILE_LEVEL_PLAN_ERRORS = ("plan_format", "a plan is a JSON object", "does not match its content_sha256")


def located_plan_error(message: str) -> bool:
    """A JSON path (`$...`), a line:column, or a reason about the whole file."""
    return "$" in message or re.search(r":\d+:\d+: ", message) is not None or any(f in message for f in FILE_LEVEL_PLAN_ERRORS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hang-seconds", type=float, default=5.0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    base_plan = compile_source(RECIPE, name="wan22_i2v.yaml").plan.to_dict()
    counts = {"crash": 0, "hang": 0, "silent accept": 0, "unlocated": 0}
    outcomes = {"recipe compiled": 0, "recipe refused": 0, "plan loaded": 0, "plan refused": 0}
    examples: dict[str, str] = {}
    slowest = 0.0
    start_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        plan_file = Path(tmp) / "plan.json"
        for index in range(args.mutants):
            is_recipe = index % 2 == 0
            start = time.perf_counter()
            failure = None
            try:
                if is_recipe:
                    text = mutate_recipe(rng)
                    result = compile_source(text, name="m.yaml")
                    if result.plan is not None:
                        outcomes["recipe compiled"] += 1
                        load_plan(json.loads(result.plan.to_json()))  # what the compiler wrote must load back
                    else:
                        outcomes["recipe refused"] += 1
                        if not result.errors:
                            failure = ("silent accept", "no plan and no error")
                        elif any(d.line <= 0 for d in result.errors) and text.strip():
                            bad = next(d for d in result.errors if d.line <= 0)
                            if bad.code not in ("QC001",):  # file-level (unreadable file) findings have no line
                                failure = ("unlocated", f"{bad.code} {bad.message}")
                else:
                    data = mutate_plan(rng, base_plan)
                    if index % 4 == 1:  # half the plans through the file reader, half as parsed dicts
                        plan_file.write_text(json.dumps(data), encoding="utf-8")
                        source = plan_file
                    else:
                        source = data
                    try:
                        plan = load_plan(source)
                    except PlanError as exc:
                        outcomes["plan refused"] += 1
                        if not located_plan_error(str(exc)):
                            failure = ("unlocated", str(exc)[:200])
                    else:
                        outcomes["plan loaded"] += 1
                        reason = consistent(plan)
                        if reason:
                            failure = ("silent accept", reason)
            except PlanError as exc:  # a compiled plan that does not load back
                failure = ("silent accept", f"compiled plan does not load: {exc}"[:200])
            except Exception as exc:  # noqa: BLE001 - counting every other exception is the point
                failure = ("crash", f"{type(exc).__name__}: {exc}"[:200])
            elapsed = time.perf_counter() - start
            slowest = max(slowest, elapsed)
            if elapsed > args.hang_seconds:
                failure = failure or ("hang", f"{elapsed:.1f} s")
            if failure:
                counts[failure[0]] += 1
                examples.setdefault(failure[0], f"mutant {index} ({'recipe' if is_recipe else 'plan'}): {failure[1]}")
                if os.environ.get("FUZZ_VERBOSE"):
                    print(failure)
    total = time.perf_counter() - start_all
    print(f"{args.mutants} mutants (seed {args.seed}) in {total:.1f} s on {os.cpu_count()} cores; slowest {slowest * 1000:.0f} ms")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in outcomes.items()))
    print("failures: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for kind, example in examples.items():
        print(f"  first {kind}: {example!r}")
    return 1 if any(counts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
