"""`qcompile suggest`: generated recipes compile, meet their budget exactly, and budgets order their FP8 cells.

The sensitivity files here are generated data (any per-cell errors a calibration could produce), fed through
the real compiler; the end-to-end path from a measured tiny pipeline is in test_calibrate.py.
"""

from __future__ import annotations

import json
import random

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcompiler.cli.main import cli
from qcompiler.compile.compiler import compile_source
from qcompiler.schemas import schema_path
from qcompiler.suggest.cover import (
    Budget,
    SuggestError,
    choose_fp8_cells,
    format_selector,
    plan_fp8_cells,
    suggest_recipe,
)
from qcompiler.suggest.sensitivity import SensitivityError, load_sensitivity, sensitivity_from_dict
from tests.compiler.synthetic import synthetic_sensitivity


def _plan_cells(text: str, variant: str | None):
    result = compile_source(text, name="suggested.yaml", variant=variant)
    # Lint-clean: no error, and no warning but "this plan runs no FP8" (right for an all-native answer).
    assert [d.code for d in result.diagnostics if d.code != "QC202"] == [], result.diagnostics
    return plan_fp8_cells(dict(result.plan.tables))


def _measured_fp8(text: str, sensitivity) -> set:
    return {key for key in _plan_cells(text, sensitivity.variant) if key in sensitivity.cells}


@pytest.mark.parametrize("budget", [Budget("min_cos", 0.99), Budget("max_rel_l1", 0.02), Budget("fp8_flop_share", 0.6)])
def test_recipe_compiles_strict_and_puts_exactly_the_allowed_cells_on_fp8(budget: Budget) -> None:
    sensitivity = synthetic_sensitivity(steps=6, seed=1)
    suggestion = suggest_recipe(sensitivity, budget)
    assert suggestion.text.startswith("# yaml-language-server: $schema=")
    assert _measured_fp8(suggestion.text, sensitivity) == set(suggestion.fp8_cells)
    for key in suggestion.fp8_cells:
        cell = sensitivity.cells[key]
        if budget.kind == "min_cos":
            assert cell.cos_sim_worst >= budget.value
        elif budget.kind == "max_rel_l1":
            assert cell.rel_l1_worst <= budget.value
    if budget.kind == "fp8_flop_share":
        assert suggestion.fp8_flop_share >= budget.value


def test_recipe_is_named_rules_with_ranges_and_reasons() -> None:
    # Edge steps and the first layers are sensitive in this data (as on real Wan): few rules, not a cell dump.
    sensitivity = synthetic_sensitivity(steps=8, seed=2, noise=0.0)
    suggestion = suggest_recipe(sensitivity, Budget("min_cos", 0.993))
    recipe = yaml.safe_load(suggestion.text)
    assert 1 <= len(recipe["rules"]) <= 3
    assert all(rule["why"] and rule["name"] for rule in recipe["rules"])
    assert len({rule["name"] for rule in recipe["rules"]}) == len(recipe["rules"])
    assert _measured_fp8(suggestion.text, sensitivity) == set(suggestion.fp8_cells)


def test_lint_passes_on_a_written_recipe(tmp_path) -> None:
    sensitivity = synthetic_sensitivity(steps=6, seed=3)
    path = tmp_path / "suggested.yaml"
    path.write_text(suggest_recipe(sensitivity, Budget("min_cos", 0.99)).text, encoding="utf-8")
    result = CliRunner().invoke(cli, ["lint", "--strict", str(path)])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    loose=st.floats(0.97, 1.0),
    tighten=st.floats(0.0, 0.03),
)
def test_a_stricter_cos_budget_never_gives_more_fp8_and_excluded_cells_stay_native(seed, loose, tighten) -> None:
    sensitivity = synthetic_sensitivity(steps=5, seed=seed)
    strict = min(1.0, loose + tighten)
    loose_cells = _measured_fp8(suggest_recipe(sensitivity, Budget("min_cos", loose)).text, sensitivity)
    strict_cells = _measured_fp8(suggest_recipe(sensitivity, Budget("min_cos", strict)).text, sensitivity)
    assert strict_cells <= loose_cells
    excluded = {key for key, cell in sensitivity.cells.items() if cell.cos_sim_worst < strict}
    assert not (strict_cells & excluded)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), low=st.floats(0.0, 1.0), high=st.floats(0.0, 1.0))
def test_rel_l1_and_flop_share_budgets_are_monotone(seed, low, high) -> None:
    low, high = sorted((low, high))
    sensitivity = synthetic_sensitivity(steps=4, seed=seed)
    # rel-L1: a smaller maximum is stricter.
    strict = choose_fp8_cells(sensitivity, Budget("max_rel_l1", low * 0.05))
    loose = choose_fp8_cells(sensitivity, Budget("max_rel_l1", high * 0.05))
    assert strict <= loose
    # FLOP share: a smaller target never takes more cells, and the target is met.
    small = suggest_recipe(sensitivity, Budget("fp8_flop_share", low))
    large = suggest_recipe(sensitivity, Budget("fp8_flop_share", high))
    assert small.fp8_cells <= large.fp8_cells
    assert small.fp8_flop_share >= low - 1e-12
    assert _measured_fp8(large.text, sensitivity) == set(large.fp8_cells)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), density=st.floats(0.0, 1.0))
def test_any_mask_of_allowed_cells_is_written_exactly(seed, density) -> None:
    # Arbitrary (unstructured) allowed sets: the rule cover must still be exact, whatever the pattern.
    rng = random.Random(seed)
    sensitivity = synthetic_sensitivity(steps=4, seed=seed, noise=0.0, single_expert=rng.random() < 0.5,
                                        worst_cos=lambda *_: 0.999 if rng.random() < density else 0.9)
    suggestion = suggest_recipe(sensitivity, Budget("min_cos", 0.99))
    assert _measured_fp8(suggestion.text, sensitivity) == set(suggestion.fp8_cells)


def test_nothing_meets_the_budget_gives_an_all_native_recipe() -> None:
    sensitivity = synthetic_sensitivity(steps=4, seed=0)
    suggestion = suggest_recipe(sensitivity, Budget("min_cos", 1.0))
    assert suggestion.fp8_cells == frozenset()
    result = compile_source(suggestion.text, name="s.yaml", variant=sensitivity.variant)
    assert not result.errors and not plan_fp8_cells(dict(result.plan.tables))


def test_format_selector_writes_inclusive_ranges() -> None:
    assert format_selector([0, 1, 2, 5, 7, 8, 9], 40) == "0-2, 5, 7-9"
    assert format_selector(range(4), 4) == "all"
    assert format_selector([3], 4) == "3"


def test_budget_values_out_of_range_are_refused() -> None:
    with pytest.raises(SuggestError, match="outside 0..1"):
        Budget("fp8_flop_share", 1.5)
    with pytest.raises(SuggestError, match="negative"):
        Budget("max_rel_l1", -0.1)


def test_broken_sensitivity_files_give_clear_errors(tmp_path) -> None:
    with pytest.raises(SensitivityError, match="no such sensitivity file"):
        load_sensitivity(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(SensitivityError, match="not valid JSON"):
        load_sensitivity(bad)
    data = synthetic_sensitivity(steps=2, seed=0).data
    edited = json.loads(json.dumps(data))
    edited["cells"][0]["layer"] = 99
    with pytest.raises(SensitivityError, match="outside"):
        sensitivity_from_dict(edited)
    edited = json.loads(json.dumps(data))
    edited["sensitivity_format"] = 9
    with pytest.raises(SensitivityError, match="not supported"):
        sensitivity_from_dict(edited)


def test_cli_writes_the_recipe_and_refuses_two_budgets(tmp_path) -> None:
    source = tmp_path / "sensitivity.json"
    source.write_text(json.dumps(synthetic_sensitivity(steps=4, seed=5).data), encoding="utf-8")
    out = tmp_path / "recipe.yaml"
    runner = CliRunner()
    result = runner.invoke(cli, ["suggest", str(source), "--max-rel-l1", "0.02", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "measured cells on FP8" in result.output
    # The schema reference is relative to the written file, as in the shipped recipes, so editors resolve it.
    first = out.read_text().splitlines()[0]
    schema = first.removeprefix("# yaml-language-server: $schema=")
    assert first != schema and (out.parent / schema).resolve() == schema_path("recipe").resolve()
    result = runner.invoke(cli, ["suggest", str(source), "--max-rel-l1", "0.02", "--min-cos", "0.9", "-o", str(out)])
    assert result.exit_code == 2 and "exactly one budget" in result.output
    result = runner.invoke(cli, ["suggest", str(tmp_path / "none.json"), "--min-cos", "0.9", "-o", str(out)])
    assert result.exit_code == 1 and "no such sensitivity file" in result.output
    assert "Traceback" not in result.output


def test_suggest_and_the_run_commands_import_no_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, qcompiler.cli.main, qcompiler.suggest.cover, qcompiler.cli.report, qcompiler.cli.calibrate; "
            "assert 'torch' not in sys.modules and 'runtime' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
