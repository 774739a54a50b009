"""Recipe -> Plan: parse, validate against the schema and the family, resolve, and assemble plan data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qcompiler import __version__
from qcompiler.backend_table import no_backend_reason, rotates, serving_backends
from qcompiler.compile.resolve import RuleSelection, predict_expert_schedule, resolve_tables
from qcompiler.errors import Diagnostic, FamilyError, RecipeError, close_matches
from qcompiler.families import Family, get_family
from qcompiler.fileio import sha256
from qcompiler.formats import FORMATS, plan_numerics, recipe_findings
from qcompiler.plan.format import PLAN_FORMAT, Plan, content_sha256
from qcompiler.recipe.schema import schema_findings
from qcompiler.recipe.selectors import SelectorError, select
from qcompiler.recipe.source import SourceDocument, YamlLoadError, decode_recipe_bytes, parse_yaml, read_recipe_text


class CompileResult:
    """What compiling a recipe produced: a plan when there were no errors, and every finding."""

    def __init__(self, plan: Plan | None, diagnostics: list[Diagnostic] | None = None) -> None:
        self.plan = plan
        self.diagnostics = list(diagnostics or [])

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]


def compile_source(
    raw: bytes | str,
    *,
    name: str = "<string>",
    steps: int | None = None,
    variant: str | None = None,
    build_plan: bool = True,
) -> CompileResult:
    """Compile recipe bytes or text; never raises for bad input (findings go into the result).

    build_plan=False (linting) stops after resolution: every finding, no plan object.
    """
    try:
        text = decode_recipe_bytes(raw, name) if isinstance(raw, bytes) else raw
        doc = parse_yaml(text, name)
    except YamlLoadError as exc:
        return CompileResult(None, [exc.diagnostic])
    recipe_bytes = raw if isinstance(raw, bytes) else raw.encode("utf-8")
    return _compile_document(doc, sha256(recipe_bytes).hexdigest(), steps, variant, build_plan)


def compile_path(path: str | os.PathLike[str], *, steps: int | None = None, variant: str | None = None,
                 build_plan: bool = True) -> CompileResult:
    display = str(path)
    try:
        text = read_recipe_text(Path(path), display)
    except YamlLoadError as exc:
        return CompileResult(None, [exc.diagnostic])
    return compile_source(text, name=display, steps=steps, variant=variant, build_plan=build_plan)


def _compile_document(doc: SourceDocument, recipe_sha: str, steps: int | None, variant: str | None,
                      build_plan: bool) -> CompileResult:
    not_a_recipe = _not_a_recipe(doc)
    if not_a_recipe:
        return CompileResult(None, [not_a_recipe])
    # Every independent finding at once: the YAML reading's recoverable ones, every schema violation, and the
    # semantic checks of each part whose own values passed (a part with a finding is not checked again).
    findings = list(doc.errors)
    bad: set[tuple] = set(doc.invalid_paths)
    for path, diagnostic in schema_findings(doc):
        findings.append(diagnostic)
        bad.add(path)

    def clean(*path: Any) -> bool:
        return not any(b[:len(path)] == path or path[:len(b)] == b for b in bad)

    data: dict[str, Any] = doc.data
    family = _family_or_finding(doc, variant, findings) if clean("family") else None
    if family is None:
        return CompileResult(None, findings)
    num_steps = steps if steps is not None else (data["num_inference_steps"] if clean("num_inference_steps") else None)
    scope_components = tuple(data.get("components") or family.component_names) if clean("components") else family.component_names
    scope_kinds = tuple(data["attention_kinds"]) if clean("attention_kinds") else family.kinds
    if clean("components"):
        _check_names(doc, ("components",), scope_components, family.component_names, "component", family, findings)
    if clean("attention_kinds"):
        _check_names(doc, ("attention_kinds",), scope_kinds, family.kinds, "attention kind", family, findings)
    if clean("dtype") and clean("numerics"):
        _check_format_numerics(doc, findings)
    rules = (_read_rules(doc, family, num_steps, scope_components, scope_kinds, findings, clean)
             if isinstance(data.get("rules") or [], list) else [])
    if any(d.severity == "error" for d in findings):
        return CompileResult(None, findings)
    assert num_steps is not None
    resolution = resolve_tables(family, num_steps, scope_components, scope_kinds, data["default"] == "fp8", rules)
    for index, effect in enumerate(resolution.effects):
        if effect.cells_changed == 0:
            mark = doc.mark_for(("rules", index, "name"))
            findings.append(Diagnostic(
                doc.path, mark.line, mark.column, "warning", "QC201",
                f"rule `{effect.name}` changes nothing: every cell it selects is already {effect.precision} "
                "(from `default` or an earlier rule)",
                "remove the rule, or change its selectors or precision; --strict makes this an error",
            ))
    if not any(any(masks) for masks in resolution.masks.values()):
        findings.append(Diagnostic(doc.path, 0, 0, "warning", "QC202", "the plan runs no attention call in FP8",
                                   "set `default: fp8` or add a rule with `precision: fp8`"))
    _check_head_dims(doc, family, resolution.masks, findings)
    if not build_plan:
        return CompileResult(None, findings)
    plan_data = _plan_data(doc, data, family, num_steps, recipe_sha, resolution)
    return CompileResult(Plan.from_dict(plan_data, trusted=True), findings)


_OTHER_DOCUMENTS = {
    "plan_format": "a qcompile plan, not a recipe (use qcompile show or qcompile check on plans; lint and compile read recipes)",
    "sensitivity_format": "a qcompile sensitivity file, not a recipe (use qcompile suggest on it to write a recipe)",
}


def _not_a_recipe(doc: SourceDocument) -> Diagnostic | None:
    """A plan or sensitivity file given where a recipe is expected: one finding, not one per unknown key."""
    if not isinstance(doc.data, dict) or "version" in doc.data:
        return None
    for key, what in _OTHER_DOCUMENTS.items():
        if key in doc.data:
            mark = doc.mark_for((key,), key=True)
            return Diagnostic(doc.path, mark.line, mark.column, "error", "QC011", f"this is {what}",
                              "pass a recipe (.yaml), e.g. recipes/wan22_i2v.yaml")
    return None


def _family_or_finding(doc: SourceDocument, variant: str | None, findings: list[Diagnostic]) -> Family | None:
    name = doc.data.get("family") if isinstance(doc.data, dict) else None
    if not isinstance(name, str):
        return None
    try:
        return get_family(name, variant)
    except FamilyError as exc:
        mark = doc.mark_for(("family",))
        message = str(exc)
        hint = "run `qcompile families` for the list"
        findings.append(Diagnostic(doc.path, mark.line, mark.column, "error", "QC120", message, hint))
        return None


def _check_names(doc: SourceDocument, path: tuple, names: tuple[str, ...], valid: tuple[str, ...], what: str,
                 family: Family, findings: list[Diagnostic]) -> None:
    for index, item in enumerate(names):
        if item not in valid:
            mark = doc.mark_for((*path, index))
            close = close_matches(item, list(valid), n=1) if isinstance(item, str) else []
            findings.append(Diagnostic(
                doc.path, mark.line, mark.column, "error", "QC121",
                f"{family.display_name} has no {what} `{item}`",
                (f"did you mean `{close[0]}`? " if close else "") + f"valid: {', '.join(valid)}",
            ))


def _read_rules(doc: SourceDocument, family: Family, num_steps: int | None, scope_components: tuple[str, ...],
                scope_kinds: tuple[str, ...], findings: list[Diagnostic], clean: Callable[..., bool]) -> list[RuleSelection]:
    """The rules' selections; a rule with a finding of its own (schema, YAML) is skipped, the others checked."""
    rules = []
    seen: dict[str, int] = {}
    for index, rule in enumerate(doc.data.get("rules") or []):
        if not isinstance(rule, dict) or not clean("rules", index, "components") or not clean("rules", index, "attention_kinds"):
            continue
        name = rule.get("name")
        if clean("rules", index, "name"):
            if name in seen:
                mark = doc.mark_for(("rules", index, "name"))
                findings.append(Diagnostic(doc.path, mark.line, mark.column, "error", "QC140",
                                           f"rule name `{name}` is used twice (first by rule {seen[name]})", "give each rule its own name"))
            seen.setdefault(name, index)
        components = tuple(rule.get("components") or scope_components)
        kinds = tuple(rule.get("attention_kinds") or scope_kinds)
        _check_scope(doc, index, "components", components, scope_components, family.component_names, "component", family, findings)
        _check_scope(doc, index, "attention_kinds", kinds, scope_kinds, family.kinds, "attention kind", family, findings)
        lists = _rule_block_lists(doc, index, family, findings) if clean("rules", index, "block_lists") else None
        if lists is not None:
            kinds = tuple(k for k in kinds if k in family.kinds_in(lists))
        steps = (_select_or_finding(doc, index, "steps", rule.get("steps", "all"), num_steps, findings)
                 if num_steps is not None and clean("rules", index, "steps") else None)
        layers = (_layers_per_block_list(doc, index, family, components, kinds, rule.get("layers", "all"), findings)
                  if clean("rules", index, "layers") else None)
        if steps is not None and layers is not None and clean("rules", index, "name") and clean("rules", index, "precision"):
            rules.append(RuleSelection(name, rule["precision"], components, kinds, steps, layers))
    return rules


def _rule_block_lists(doc: SourceDocument, index: int, family: Family,
                      findings: list[Diagnostic]) -> tuple[str, ...] | None:
    """The rule's `block_lists` (None when it has none); a name the family lacks is QC122."""
    chosen = doc.data["rules"][index].get("block_lists")
    if chosen is None:
        return None
    known = family.block_list_names
    for position, item in enumerate(chosen):
        if item not in known:
            mark = doc.mark_for(("rules", index, "block_lists", position))
            close = close_matches(item, list(known), n=1)
            findings.append(Diagnostic(
                doc.path, mark.line, mark.column, "error", "QC122",
                f"rule `{_rule_label(doc, index)}` selects block list `{item}`, which "
                f"{family.display_name} does not have" + (f" (did you mean `{close[0]}`?)" if close else ""),
                f"block lists of {family.name}: {', '.join(known)}",
            ))
    return tuple(chosen)


def _layers_per_block_list(doc: SourceDocument, index: int, family: Family, components: tuple[str, ...],
                           kinds: tuple[str, ...], value: Any,
                           findings: list[Diagnostic]) -> dict[str, frozenset[int]] | None:
    """The rule's `layers`, read against each block list its kinds live in (its length: the shortest among
    the rule's components). One finding at most, for the first list the selector does not fit."""
    names = [c for c in components if c in family.component_names] or list(family.component_names)
    lists = sorted({family.kind(k).block_list for k in kinds if k in family.kinds})
    if not lists:  # no kind selected (or only unknown ones, reported already): read against the first list
        lists = [family.kind_specs[0].block_list]
    selected: dict[str, frozenset[int]] = {}
    for block_list in lists:
        length = min(family.block_list(c, block_list).length for c in names)
        layers = _select_or_finding(doc, index, "layers", value, length, findings)
        if layers is None:
            return None
        selected[block_list] = layers
    return selected


def _check_format_numerics(doc: SourceDocument, findings: list[Diagnostic]) -> None:
    """What the recipe's format says about its numerics (qcompiler/formats/: keys of another format, QC150/QC152;
    the format's own warning, QC151), located in the recipe."""
    for finding in recipe_findings(doc.data["dtype"], doc.data.get("numerics")):
        mark = doc.mark_for(finding.path, key=finding.at_key)
        findings.append(Diagnostic(doc.path, mark.line, mark.column, finding.severity, finding.code,
                                   finding.message, finding.hint))


def _check_scope(doc: SourceDocument, index: int, key: str, chosen: tuple[str, ...], scope: tuple[str, ...],
                 valid: tuple[str, ...], what: str, family: Family, findings: list[Diagnostic]) -> None:
    for position, item in enumerate(chosen):
        if item in scope:
            continue
        mark = doc.mark_for(("rules", index, key, position))
        rule_name = _rule_label(doc, index)
        if item not in valid:  # not the family's: adding it to the top-level list would only move the error
            close = close_matches(item, list(valid), n=1)
            findings.append(Diagnostic(
                doc.path, mark.line, mark.column, "error", "QC121",
                f"rule `{rule_name}` selects {what} `{item}`, which {family.display_name} does not have",
                (f"did you mean `{close[0]}`? " if close else "") + f"{family.display_name}'s {what}s: {', '.join(valid)}",
            ))
        else:
            findings.append(Diagnostic(
                doc.path, mark.line, mark.column, "error", "QC121",
                f"rule `{rule_name}` selects {what} `{item}`, which is not in the recipe's `{key}` ({', '.join(scope)})",
                f"add `{item}` to the top-level `{key}`, or remove it from the rule",
            ))


def _rule_label(doc: SourceDocument, index: int) -> str:
    """The rule's name for messages, or `#INDEX` when the name itself is at fault (a line break would split the
    message's line)."""
    name = doc.data["rules"][index].get("name")
    return name if isinstance(name, str) and name and name == name.strip() else f"#{index}"


def _select_or_finding(doc: SourceDocument, index: int, key: str, value: Any, length: int,
                       findings: list[Diagnostic]) -> frozenset[int] | None:
    try:
        return select(value, length, key)
    except SelectorError as exc:
        path = ("rules", index, key) if exc.list_index is None else ("rules", index, key, exc.list_index)
        mark = doc.mark_for(path)
        column = mark.column + (1 if mark.quoted else 0) + exc.offset if exc.list_index is None else mark.column
        rule_name = _rule_label(doc, index)
        findings.append(Diagnostic(doc.path, mark.line, column, "error", exc.code, f"rule `{rule_name}`: {exc.message}", exc.hint))
        return None


def _check_head_dims(doc: SourceDocument, family: Family, masks: dict[tuple[str, str], tuple[int, ...]],
                     findings: list[Diagnostic]) -> None:
    """QC153: a component with quantized cells whose head dim no backend runs at the recipe's dtype
    (qcompiler/backend_table.py): those cells can only ever follow `fallback`."""
    data = doc.data
    dtype, given = data["dtype"], data.get("numerics")
    rotated = rotates(plan_numerics(dtype, given))
    for component in family.components:
        quantized = any(any(grid) for (name, _kind), grid in masks.items() if name == component.name)
        why = no_backend_reason(dtype, component.head_dim, rotated) if quantized else None
        if why is None:
            continue
        others = [d for d in FORMATS if d != dtype
                  and serving_backends(d, component.head_dim, rotates(plan_numerics(d, given)))]
        mark = doc.mark_for(("family",))
        findings.append(Diagnostic(
            doc.path, mark.line, mark.column, "warning", "QC153",
            f"{family.display_name} {component.name} has head dim {component.head_dim}: {why}; its quantized "
            f"cells can only follow `fallback` ({data['fallback']})",
            f"use dtype {' or '.join(others)}, which a backend runs at head dim {component.head_dim}" if others else
            f"no dtype runs at head dim {component.head_dim}: use `precision: native` for {component.name}",
        ))


def _plan_data(doc: SourceDocument, data: dict, family: Family, num_steps: int, recipe_sha: str, resolution) -> dict:
    tables: dict[str, dict[str, list[str]]] = {}
    for component, kind in resolution.masks:
        tables.setdefault(component, {})[kind] = resolution.rows(component, kind)
    plan: dict[str, Any] = {
        "plan_format": PLAN_FORMAT,
        "compiler": {"name": "qcompile", "version": __version__},
        "family": family.structure(),
        "num_inference_steps": num_steps,
        "dtype": data["dtype"],
        "numerics": plan_numerics(data["dtype"], data.get("numerics")),
        "fallback": data["fallback"],
        "expert_schedule": predict_expert_schedule(family, num_steps),
        "tables": tables,
        "rules": [
            {
                "name": effect.name,
                "precision": effect.precision,
                "cells_changed": effect.cells_changed,
                "changed": {
                    component: {kind: cells for (comp, kind), cells in sorted(effect.changed.items()) if comp == component}
                    for component in sorted({comp for comp, _ in effect.changed})
                },
            }
            for effect in resolution.effects
        ],
        "recipe": {"name": os.path.basename(doc.path), "sha256": recipe_sha, "default": data["default"]},
    }
    plan["content_sha256"] = content_sha256(plan)
    return plan


def raise_for_findings(result: CompileResult, *, strict: bool = False) -> Plan:
    """The plan, or RecipeError when there are errors (or warnings under strict)."""
    blocking = result.diagnostics if strict else result.errors
    if blocking or result.plan is None:
        raise RecipeError(result.diagnostics)
    return result.plan
