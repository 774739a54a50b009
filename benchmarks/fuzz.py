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
- mislocated:    a recipe finding located past the end of the text (a line after the last, a column past the
                 end of its line): no editor can go there

Since issue 18 the mutants also include truncated recipes, rule names written as `|` blocks (a name ending in a
line break must be refused), pairs of loadable plans of unlike structure through `qcompile diff` (exit 0/1/2 and
a message without Python reprs, never an exception), and sensitivity files through `qcompile suggest`'s steps
(a SensitivityError naming the file, never "internal error", a hang or a crash). Every mutant runs under an
alarm of --hang-seconds, so a hang is counted, not waited out.

Usage: python benchmarks/fuzz.py [--mutants 10000] [--seed 0]
Prints the counts and, for each kind of failure, the first example. Exit status 1 when any count is not 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from click.testing import CliRunner  # noqa: E402

from qcompiler.cli.main import cli  # noqa: E402
from qcompiler.compile.compiler import compile_source  # noqa: E402
from qcompiler.errors import PlanError, QcompileError  # noqa: E402
from qcompiler.plan.format import content_sha256, load_plan  # noqa: E402
from qcompiler.recipe.schema import _RULE_NAME  # noqa: E402
from qcompiler.suggest.cover import Budget, suggest_recipe, verify_suggestion  # noqa: E402
from qcompiler.suggest.sensitivity import load_sensitivity  # noqa: E402
from tests.compiler.synthetic import synthetic_sensitivity  # noqa: E402

RECIPE = (REPO / "recipes" / "wan22_i2v.yaml").read_text(encoding="utf-8")
TOKENS = ["yes", "no", "on", "10:20", "0x10", "010", "1_000", "~", "null", "true", "-1", "1e999", "4.0", ".nan",
          '"0-2"', '"first 15%"', '"last 1"', '"all/2"', '"\u0661-\u0663"', '"\uff11"', "[0, 1]", "[]", "{}", "&a x",
          "*a", "!!str x", "'", '"', "|", ">", ": :", "\t", "\x01", "\x7f", "\ufeff", "all", "fp8", "native", "self",
          "cross", "transformer", "transformer_2", "9" * 40, "9" * 5000, "[" * 3000, "-\n" * 50, "{a: [b, {c: d}]}",
          "é", "\u202e", "0-99999", "99999-", "first 0", "last 101%", "0-39/0", "5-2"]
PLAN_VALUES = [None, True, False, 0, -1, 1, 4.0, 2**64, 10**30, "", "0", "01\n", "012", "x", "{layer}", "blocks.attn",
               [], {}, [[]], {"a": 1}, "transformer_9", "self", 1e308]


# Plans of other families, variants, step counts and kind scopes: `qcompile diff` partners for plan mutants.
DIFF_RECIPES = [("wan22_i2v.yaml", {}), ("wan22_i2v.yaml", {"variant": "tiny"}), ("wan22_i2v.yaml", {"steps": 7}),
                ("wan22_t2v.yaml", {}), ("wan21_t2v_1_3b.yaml", {})]
SENSITIVITY_VALUES = [None, True, 0, -1, 1, 10**12, 2**40, 1e308, -1e308, "", "wan9-nothing", "transformer_9", "cross",
                      "tiny", [], {}, 0.5, float(10**6)]


def mutate_recipe(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.05:  # truncated at any character: errors must stay inside the text
        return RECIPE[: rng.randrange(len(RECIPE))]
    if roll < 0.08:  # a rule name written as a `|` block: the name ends in a line break
        names = [line for line in RECIPE.splitlines() if line.strip().startswith("- name:")]
        line = rng.choice(names)
        indent = " " * (len(line) - len(line.lstrip()) + 4)
        return RECIPE.replace(line, f"{line.split(':')[0]}: {rng.choice('|>')}\n{indent}{line.split(':', 1)[1].strip()}", 1)
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
    data = mutate_json(rng, plan, PLAN_VALUES)
    if isinstance(data, dict):
        try:
            data["content_sha256"] = content_sha256(data)  # re-hash: the hash check must not be the only guard
        except (TypeError, ValueError):
            pass
    return data


def mutate_json(rng: random.Random, document: dict, values: list) -> dict:
    data = json.loads(json.dumps(document))
    for _ in range(rng.randint(1, 2)):
        paths = [p for p in _paths(data) if p]
        path = rng.choice(paths)
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        action = rng.random()
        if action < 0.6:
            parent[path[-1]] = rng.choice(values)
        elif action < 0.75 and isinstance(parent, dict):
            del parent[path[-1]]
        elif action < 0.9 and isinstance(parent[path[-1]], str) and parent[path[-1]]:
            text = parent[path[-1]]
            at = rng.randrange(len(text))
            parent[path[-1]] = text[:at] + rng.choice("01\n2 {}x") + text[at + 1:]
        elif isinstance(parent, list):
            parent.append(parent[path[-1]])
    return data


def mislocated(text: str, diagnostics) -> str | None:
    """A finding whose line:column is not a position of the text, or None."""
    lines = text.splitlines()
    for d in diagnostics:
        if d.line > 0 and (d.line > max(len(lines), 1) or d.column > len(lines[d.line - 1] if lines else "") + 1):
            return f"{d.code} at {d.line}:{d.column}, the text has {len(lines)} lines"
    return None


def bad_rule_name(plan) -> str | None:
    for rule in plan.data["rules"]:
        if not _RULE_NAME.fullmatch(rule["name"]) or rule["name"] != rule["name"].strip():
            return f"rule name {rule['name']!r} accepted"
    return None


def diff_outcome(plan_a: Path, plan_b: Path) -> str | None:
    """Why `qcompile diff` of two files misbehaved, or None (exit 0/1/2, no exception, no Python reprs)."""
    result = CliRunner().invoke(cli, ["diff", str(plan_a), str(plan_b)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return f"diff: {type(result.exception).__name__}: {result.exception}"
    if result.exit_code not in (0, 1, 2):
        return f"diff exit {result.exit_code}"
    if re.search(r"\bNone\b|Traceback", result.output):
        return f"diff message: {result.output.strip()[:120]}"
    if "cannot compare" in result.output and result.exit_code != 2:
        return f"diff exit {result.exit_code} for plans it cannot compare (2 expected)"
    return None


def hostile_partners(plan: dict) -> list[dict]:
    """Loadable plans of the same family, variant and steps as `plan` but another structure (no cross-attention;
    3 layers in the first component), re-hashed: what `qcompile diff` must refuse with exit 2, not a KeyError."""
    no_cross = json.loads(json.dumps(plan))
    del no_cross["family"]["attention_kinds"]["cross"]
    for planes in no_cross["tables"].values():
        planes.pop("cross")
    for rule in no_cross["rules"]:
        for planes in rule["changed"].values():
            rule["cells_changed"] -= planes.pop("cross", 0)
    fewer_layers = json.loads(json.dumps(plan))
    first = fewer_layers["family"]["components"][0]
    first["num_layers"] = 3
    fewer_layers["tables"][first["name"]] = {kind: [row[:3] for row in rows]
                                             for kind, rows in fewer_layers["tables"][first["name"]].items()}
    fewer_layers["rules"] = []
    for data in (no_cross, fewer_layers):
        data["content_sha256"] = content_sha256(data)
    return [no_cross, fewer_layers]


# Targeted hostile sensitivity files (besides random values at random paths): sizes no recipe can have, families
# and structures qcompile does not know.
SENSITIVITY_ATTACKS = [
    lambda d: d.update(num_inference_steps=10**12),
    lambda d: d["family"].update(name="wan9-nothing"),
    lambda d: d["family"].update(variant="huge"),
    lambda d: d["family"]["components"][0].update(num_layers=10**9),
    lambda d: d["family"]["components"].pop(),
    lambda d: d["family"].update(attention_kinds=["self"]),
]


def suggest_outcome(rng: random.Random, base: dict) -> tuple[str, str | None]:
    """(outcome, failure) of a mutated sensitivity file through `qcompile suggest`'s steps."""
    data = mutate_json(rng, base, SENSITIVITY_VALUES)
    if rng.random() < 0.3 and isinstance(data.get("family"), dict) and data["family"].get("components"):
        try:
            rng.choice(SENSITIVITY_ATTACKS)(data)
        except (AttributeError, TypeError, KeyError, IndexError):
            pass  # the random mutation already broke the part the attack edits
    try:
        sensitivity = load_sensitivity(data)
        budget = Budget("min_cos", rng.choice([0.5, 0.99, 0.999, 1.0]))
        suggestion = suggest_recipe(sensitivity, budget)
        result = compile_source(suggestion.text, name="suggested.yaml", variant=sensitivity.variant)
        if result.plan is None:
            return "sensitivity used", f"suggested recipe does not compile: {result.errors[0].message}"[:200]
        verify_suggestion(suggestion, sensitivity, dict(result.plan.tables))
        return "sensitivity used", None
    except QcompileError as exc:
        return "sensitivity refused", (f"internal error: {exc}"[:200] if "internal error" in str(exc) else None)


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def consistent(plan) -> str | None:
    """Why an accepted plan is inconsistent, or None: the checks a silent accept would slip past.

    Table sizes come from the plan's typed family (plan format 1: one block list per component; format 2: the
    kind's block list), so both formats are checked by the same rule: steps x the kind's block-list length."""
    family = plan.family
    names = set(family.component_names)
    steps = plan.num_inference_steps
    kinds = {k.name: k for k in family.kind_specs}
    for component, by_kind in plan.data["tables"].items():
        for kind, rows in by_kind.items():
            if component not in names or kind not in kinds:
                return f"table {component}/{kind} names no component or kind of the family"
            length = family.component(component).block_list(kinds[kind].block_list).length
            if len(rows) != steps or any(len(r) != length or set(r) - {"0", "1"} for r in rows):
                return f"table {component}/{kind} is not {steps} x {length} of 0/1"
    if any(name not in names for name in plan.expert_schedule) or len(plan.expert_schedule) != steps:
        return "expert_schedule inconsistent"
    if plan.data.get("plan_format") == 1 and any(
            "{layer}" not in spec["module"] for spec in plan.data["family"]["attention_kinds"].values()):
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
    base_sensitivity = json.loads(json.dumps(dict(synthetic_sensitivity(steps=4, seed=0).data)))
    counts = {"crash": 0, "hang": 0, "silent accept": 0, "unlocated": 0, "mislocated": 0}
    outcomes = {"recipe compiled": 0, "recipe refused": 0, "plan loaded": 0, "plan refused": 0, "plans diffed": 0,
                "sensitivity used": 0, "sensitivity refused": 0}
    examples: dict[str, str] = {}
    slowest = 0.0
    signal.signal(signal.SIGALRM, _alarm)
    start_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        plan_file = Path(tmp) / "plan.json"
        partners = []
        for number, (name, options) in enumerate(DIFF_RECIPES):
            partner = Path(tmp) / f"partner{number}.json"
            partner.write_text(compile_source((REPO / "recipes" / name).read_text(encoding="utf-8"), name=name,
                                              **options).plan.to_json(), encoding="utf-8")
            partners.append(partner)
        for number, data in enumerate(hostile_partners(base_plan)):
            partner = Path(tmp) / f"hostile{number}.json"
            partner.write_text(json.dumps(data), encoding="utf-8")
            partners.append(partner)
        for index in range(args.mutants):
            kind = "sensitivity" if index % 10 == 9 else "recipe" if index % 2 == 0 else "plan"
            start = time.perf_counter()
            failure = None
            signal.setitimer(signal.ITIMER_REAL, args.hang_seconds)
            try:
                if kind == "sensitivity":
                    outcome, reason = suggest_outcome(rng, base_sensitivity)
                    outcomes[outcome] += 1
                    if reason:
                        failure = ("crash", reason)
                elif kind == "recipe":
                    text = mutate_recipe(rng)
                    result = compile_source(text, name="m.yaml")
                    where = mislocated(text, result.diagnostics)
                    if result.plan is not None:
                        outcomes["recipe compiled"] += 1
                        load_plan(json.loads(result.plan.to_json()))  # what the compiler wrote must load back
                        name = bad_rule_name(result.plan)
                        if name:
                            failure = ("silent accept", name)
                    else:
                        outcomes["recipe refused"] += 1
                        if not result.errors:
                            failure = ("silent accept", "no plan and no error")
                        elif any(d.line <= 0 for d in result.errors) and text.strip():
                            bad = next(d for d in result.errors if d.line <= 0)
                            if bad.code not in ("QC001",):  # file-level (unreadable file) findings have no line
                                failure = ("unlocated", f"{bad.code} {bad.message}")
                    if where and not failure:
                        failure = ("mislocated", where)
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
                        elif index % 4 == 1:  # a loadable hostile plan against a plan of another structure
                            outcomes["plans diffed"] += 1
                            reason = diff_outcome(plan_file, rng.choice(partners))
                            if reason:
                                failure = ("crash", reason)
            except Hang:
                failure = ("hang", f"over {args.hang_seconds:g} s (stopped)")
            except PlanError as exc:  # a compiled plan that does not load back
                failure = ("silent accept", f"compiled plan does not load: {exc}"[:200])
            except Exception as exc:  # noqa: BLE001 - counting every other exception is the point
                failure = ("crash", f"{type(exc).__name__}: {exc}"[:200])
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            elapsed = time.perf_counter() - start
            slowest = max(slowest, elapsed)
            if failure:
                counts[failure[0]] += 1
                examples.setdefault(failure[0], f"mutant {index} ({kind}): {failure[1]}")
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
