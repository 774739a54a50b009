"""Write the recipe that meets a quality budget with the most FP8, from a sensitivity file. Never imports torch.

The algorithm (also in docs/report-and-calibrate.md):

1. Choose the cells. A measured cell may run FP8 iff its worst call meets the budget:
   `--min-cos X`: worst cos-sim >= X; `--max-rel-l1 X`: worst rel-L1 <= X. That set is the largest one whose
   every call meets the budget, so it maximizes FP8 coverage (cells and FLOPs). `--fp8-flop-share X`: cells
   are ranked from least to most sensitive (worst cos-sim, then worst rel-L1) and taken until their FLOPs
   reach X of all measured attention FLOPs: no other set with that share has a better worst call. Every mode
   is a threshold on one ranking, so a stricter budget always gives a subset of a looser one's cells.
2. Write the cells as rules, exactly. Cells that never ran (a step the other expert serves) may take either
   value. Components and kinds with no FP8 cell leave the recipe's scope. With `default: fp8` every rule
   sets `native` (and the reverse); the cells a rule selects must all be "flip" or "don't care", so the plan
   is exactly the chosen cells. Rules are products `steps x layers` (x components x kinds), found greedily:
   whole steps first, then whole layers, then rows (or columns, whichever needs fewer rules) grouped when
   one range of layers covers all of them, gaps filled with don't-care cells so selectors read as ranges;
   rules no longer needed are dropped. Planes (component, kind) are tried jointly, per kind, per component
   and alone; the default and grouping with the fewest rules wins.
3. Check it: the text is compiled with the real compiler and its tables compared to the chosen cells
   (`verify_suggestion`).
4. The fallback (unless given): `native` when a kind the recipe runs quantized can carry an attention mask in the
   measured model, or had calls the kernel could not take during calibration (the file's `masks`): a call whose
   mask the kernel cannot serve exactly then runs native, counted in the report, instead of stopping the run.
   `error` otherwise, and for a format-1 file, which does not say (a comment then says the masks are unknown).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby

from qcompiler.errors import QcompileError
from qcompiler.families import Family, get_family
from qcompiler.formats import get_format, quantized_name
from qcompiler.ranges import format_ranges
from qcompiler.suggest.sensitivity import CellKey, CellSensitivity, Sensitivity, SensitivityError

# Where editors find the recipe schema from a recipe in recipes/; the CLI passes the path from the output file.
RECIPE_SCHEMA_URL = "../schemas/recipe.schema.json"
BUDGET_KINDS = ("min_cos", "max_rel_l1", "fp8_flop_share")

Plane = tuple[str, str]  # (component, kind)
Cell = tuple[int, int]  # (step, layer)
FLIP, KEEP, ANY = "flip", "keep", "any"


class SuggestError(QcompileError):
    """No recipe can be written for this sensitivity file and budget (the message says why)."""


@dataclass(frozen=True)
class Budget:
    """A quality budget: `kind` is min_cos, max_rel_l1 or fp8_flop_share; `value` its threshold."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise SuggestError(f"unknown budget {self.kind!r}; use one of {', '.join(BUDGET_KINDS)}")
        if self.kind == "min_cos" and not -1.0 <= self.value <= 1.0:
            raise SuggestError(f"--min-cos {self.value} is outside -1..1 (cosine similarity)")
        if self.kind == "max_rel_l1" and self.value < 0:
            raise SuggestError(f"--max-rel-l1 {self.value} is negative")
        if self.kind == "fp8_flop_share" and not 0.0 <= self.value <= 1.0:
            raise SuggestError(f"--fp8-flop-share {self.value} is outside 0..1 (a share, 0.5 = half)")

    def describe(self) -> str:
        return {
            "min_cos": f"every FP8 call's cosine similarity >= {self.value:g}",
            "max_rel_l1": f"every FP8 call's relative L1 <= {self.value:g}",
            "fp8_flop_share": f"{self.value:.0%} of attention FLOPs on FP8, least sensitive cells first",
        }[self.kind]

    def flag(self) -> str:
        return {"min_cos": "--min-cos", "max_rel_l1": "--max-rel-l1", "fp8_flop_share": "--fp8-flop-share"}[
            self.kind
        ] + f" {self.value:g}"


def _tolerance_order(cell: CellSensitivity) -> tuple:
    # Most tolerant first; the cell key last makes ties deterministic, so shares are nested across budgets.
    return (-cell.cos_sim_worst, cell.rel_l1_worst, cell.key)


def choose_fp8_cells(sensitivity: Sensitivity, budget: Budget) -> frozenset[CellKey]:
    """The measured cells that may run FP8 under `budget` (step 1 of the module docstring)."""
    cells = sensitivity.cells.values()
    if budget.kind == "min_cos":
        return frozenset(c.key for c in cells if c.cos_sim_worst >= budget.value)
    if budget.kind == "max_rel_l1":
        return frozenset(c.key for c in cells if c.rel_l1_worst <= budget.value)
    total = sum(c.flops for c in cells)
    target = budget.value * total
    chosen: set[CellKey] = set()
    reached = 0.0
    for cell in sorted(cells, key=_tolerance_order):
        # Relative slack: summing float FLOPs must not leave a share of exactly X one cell short.
        if reached >= target * (1 - 1e-12):
            break
        chosen.add(cell.key)
        reached += cell.flops
    return frozenset(chosen)


# -- rule cover -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rect:
    """A rule's selection: planes x steps x layers."""

    planes: frozenset[Plane]
    steps: frozenset[int]
    layers: frozenset[int]


Grid = dict[Cell, str]  # (step, layer) -> FLIP | KEEP | ANY


def _fill_gaps(chosen: set[int], candidates: set[int]) -> set[int]:
    """Add the indices between consecutive chosen ones when all of them are candidates (ranges read better)."""
    ordered = sorted(chosen)
    filled = set(chosen)
    for low, high in zip(ordered, ordered[1:], strict=False):
        gap = set(range(low + 1, high))
        if gap and gap <= candidates:
            filled |= gap
    return filled


def _group_lines(lines: dict[int, set[int]], coverable: dict[int, set[int]]) -> list[tuple[set[int], set[int]]]:
    """Group lines (rows or columns) whose needed indices one shared index set can cover.

    `lines[i]` = indices line i must cover; `coverable[i]` = indices it may cover. Returns (lines, indices).
    """
    groups: list[tuple[set[int], set[int], set[int]]] = []  # (lines, needed union, coverable intersection)
    for line in sorted(lines):
        needed = lines[line]
        for members, union, inter in groups:
            if (union | needed) <= (inter & coverable[line]):
                members.add(line)
                union |= needed
                inter &= coverable[line]
                break
        else:
            groups.append(({line}, set(needed), set(coverable[line])))
    result = []
    for members, union, inter in groups:
        indices = _fill_gaps(union, inter)
        # Lines between members whose coverable set holds the indices join, so steps read as ranges too.
        others = {line for line, can in coverable.items() if indices <= can}
        result.append((_fill_gaps(members, others), indices))
    return result


def _cover_grid(grid: Grid, num_steps: int, num_layers: int) -> list[tuple[frozenset[int], frozenset[int]]]:
    """Rectangles steps x layers covering every FLIP cell and no KEEP cell (greedy, see module docstring)."""
    all_steps, all_layers = set(range(num_steps)), set(range(num_layers))
    rects: list[tuple[frozenset[int], frozenset[int]]] = []
    todo = {cell for cell, state in grid.items() if state == FLIP}
    if not todo:
        return rects
    free_in_row = {s: {layer for layer in all_layers if grid[(s, layer)] != KEEP} for s in all_steps}
    free_in_col = {layer: {s for s in all_steps if grid[(s, layer)] != KEEP} for layer in all_layers}

    whole_steps = {s for s in all_steps if free_in_row[s] == all_layers and any((s, layer) in todo for layer in all_layers)}
    if whole_steps:
        rects.append((frozenset(whole_steps), frozenset(all_layers)))
        todo = {c for c in todo if c[0] not in whole_steps}
    whole_layers = {layer for layer in all_layers if free_in_col[layer] == all_steps and any((s, layer) in todo for s in all_steps)}
    if whole_layers:
        rects.append((frozenset(all_steps), frozenset(whole_layers)))
        todo = {c for c in todo if c[1] not in whole_layers}

    if todo:
        rows: dict[int, set[int]] = {}
        cols: dict[int, set[int]] = {}
        for s, layer in todo:
            rows.setdefault(s, set()).add(layer)
            cols.setdefault(layer, set()).add(s)
        by_rows = [(frozenset(lines), frozenset(idx)) for lines, idx in _group_lines(rows, free_in_row)]
        by_cols = [(frozenset(idx), frozenset(lines)) for lines, idx in _group_lines(cols, free_in_col)]
        rects.extend(by_rows if len(by_rows) <= len(by_cols) else by_cols)
    return _drop_redundant(rects, {c for c, state in grid.items() if state == FLIP})


def _drop_redundant(rects: list, needed: set[Cell]) -> list:
    kept = list(rects)
    for rect in sorted(rects, key=lambda r: len(r[0]) * len(r[1])):
        others = [r for r in kept if r is not rect]
        if needed <= {(s, layer) for steps, layers in others for s in steps for layer in layers}:
            kept = others
    return kept


# -- planes and grouping ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    num_steps: int
    layers: dict[Plane, int]  # (component, kind) -> layers


def _plane_grids(
    layout: _Layout, planes: Sequence[Plane], fp8: frozenset[CellKey], measured: Iterable[CellKey], default_fp8: bool
) -> dict[Plane, Grid]:
    measured_set = set(measured)
    grids: dict[Plane, Grid] = {}
    for component, kind in planes:
        grid: Grid = {}
        for s in range(layout.num_steps):
            for layer in range(layout.layers[(component, kind)]):
                key = (component, kind, s, layer)
                if key not in measured_set:
                    grid[(s, layer)] = ANY
                else:
                    grid[(s, layer)] = KEEP if (key in fp8) == default_fp8 else FLIP
        grids[(component, kind)] = grid
    return grids


def _combine(grids: Sequence[Grid]) -> Grid:
    combined: Grid = {}
    for cell in grids[0]:
        states = {g[cell] for g in grids}
        combined[cell] = KEEP if KEEP in states else FLIP if FLIP in states else ANY
    return combined


def _cover_planes(grids: dict[Plane, Grid], layout: _Layout, grouping: Callable[[Plane], object]) -> list[Rect]:
    """Cover jointly within each group of planes (same layer count), then per plane for what is left."""
    rects: list[Rect] = []
    planes = sorted(grids)
    for _, members in groupby(sorted(planes, key=lambda p: (str(grouping(p)), layout.layers[p], p)),
                              key=lambda p: (str(grouping(p)), layout.layers[p])):
        group = list(members)
        joint = _cover_grid(_combine([grids[p] for p in group]), layout.num_steps, layout.layers[group[0]])
        rects.extend(Rect(frozenset(group), steps, layers) for steps, layers in joint)
    for plane in planes:
        covered = {(s, layer) for r in rects if plane in r.planes for s in r.steps for layer in r.layers}
        rest = {cell: (ANY if cell in covered and state == FLIP else state) for cell, state in grids[plane].items()}
        for steps, layers in _cover_grid(rest, layout.num_steps, layout.layers[plane]):
            rects.append(Rect(frozenset({plane}), steps, layers))
    return _merge_products(rects)


def _merge_products(rects: list[Rect]) -> list[Rect]:
    """Merge rules with the same steps and layers whose planes still form components x kinds."""
    by_shape: dict[tuple[frozenset[int], frozenset[int]], set[Plane]] = {}
    for rect in rects:
        by_shape.setdefault((rect.steps, rect.layers), set()).update(rect.planes)
    merged = []
    for (steps, layers), planes in by_shape.items():
        components = {c for c, _ in planes}
        kinds = {k for _, k in planes}
        if len(planes) == len(components) * len(kinds):
            merged.append(Rect(frozenset(planes), steps, layers))
        else:  # not a product: one rule per kind, each over the components it has
            for kind in sorted(kinds):
                merged.append(Rect(frozenset(p for p in planes if p[1] == kind), steps, layers))
    return merged


# -- rendering --------------------------------------------------------------------------------------------


def format_selector(indices: Iterable[int], length: int) -> str:
    """Indices as the selector grammar's ranges: "all", or "0-2, 5, 37-39" (inclusive)."""
    return format_ranges(indices, separator=", ", length=length)


def _compact(indices: frozenset[int]) -> str:
    return format_selector(indices, -1).replace(", ", "_").replace("-", "to")


@dataclass(frozen=True)
class SuggestedRule:
    name: str
    why: str
    precision: str
    components: tuple[str, ...] | None  # None: the recipe's scope
    kinds: tuple[str, ...] | None
    steps: str
    layers: str
    block_lists: tuple[str, ...] | None = None  # selects the kinds instead of `kinds` (families of several lists)


@dataclass(frozen=True)
class Suggestion:
    """A generated recipe and the facts about it that the CLI prints."""

    text: str
    budget: Budget
    fp8_cells: frozenset[CellKey]
    measured_cells: int
    fp8_flop_share: float
    worst_fp8_cos_sim: float | None
    worst_fp8_rel_l1: float | None
    rules: tuple[SuggestedRule, ...]
    default: str
    fallback: str = "error"


def _layout(sensitivity: Sensitivity) -> _Layout:
    return _Layout(sensitivity.num_inference_steps,
                   {(c, k): sensitivity.num_layers(c, k) for c, _ in sensitivity.components for k in sensitivity.attention_kinds})


def _best_cover(sensitivity: Sensitivity, fp8: frozenset[CellKey], scope: list[Plane]) -> tuple[bool, list[Rect]]:
    layout = _layout(sensitivity)
    groupings: list[Callable[[Plane], object]] = [lambda p: "all", lambda p: p[1], lambda p: p[0], lambda p: p]
    best: tuple[tuple[int, int], bool, list[Rect]] | None = None
    for default_fp8 in (True, False):
        grids = _plane_grids(layout, scope, fp8, sensitivity.cells, default_fp8)
        for grouping in groupings:
            rects = _cover_planes(grids, layout, grouping)
            # Fewest rules, then fewest selector items; default fp8 first on ties (the natural reading).
            cost = (len(rects), sum(format_selector(r.steps, -1).count(",") + format_selector(r.layers, -1).count(",")
                                    for r in rects))
            if best is None or cost < best[0]:
                best = (cost, default_fp8, rects)
    assert best is not None
    return best[1], best[2]


def _why(rect: Rect, precision: str, sensitivity: Sensitivity, budget: Budget) -> str:
    inside = [
        sensitivity.cells[key]
        for (component, kind) in sorted(rect.planes)
        for s in sorted(rect.steps)
        for layer in sorted(rect.layers)
        if (key := (component, kind, s, layer)) in sensitivity.cells
    ]
    unmeasured = len(rect.planes) * len(rect.steps) * len(rect.layers) - len(inside)
    not_run = f"; {unmeasured} selected cells never ran (another expert serves those steps)" if unmeasured else ""
    if precision == "native":
        worst = min(inside, key=lambda c: (c.cos_sim_worst, -c.rel_l1_worst))
        where = f"{worst.component}/{worst.kind} step {worst.step} layer {worst.layer}"
        if budget.kind == "fp8_flop_share":
            reason = "among the most FP8-sensitive cells, left native so the FLOP share is reached with the least error"
        else:
            reason = f"every one of these {len(inside)} measured cells fails the budget ({budget.describe()})"
        return (f"{reason}; worst call: cos-sim {worst.cos_sim_worst:.6f}, rel-L1 {worst.rel_l1_worst:.4g} at "
                f"{where}{not_run}")
    lowest = min(inside, key=lambda c: c.cos_sim_worst)
    highest = max(inside, key=lambda c: c.rel_l1_worst)
    return (f"all {len(inside)} measured cells here meet the budget ({budget.describe()}): worst call cos-sim "
            f"{lowest.cos_sim_worst:.6f}, rel-L1 {highest.rel_l1_worst:.4g}{not_run}")


def _rules(rects: list[Rect], precision: str, scope_components: list[str], scope_kinds: list[str],
           sensitivity: Sensitivity, budget: Budget) -> list[SuggestedRule]:
    layout = _layout(sensitivity)
    family = get_family(sensitivity.family_name, sensitivity.variant)
    rules: list[SuggestedRule] = []
    used: set[str] = set()
    order = sorted(rects, key=lambda r: (min(r.steps), min(r.layers), sorted(r.planes)))
    for rect in order:
        components = sorted({c for c, _ in rect.planes}, key=scope_components.index)
        kinds = sorted({k for _, k in rect.planes})
        # "all" only when every selected component has the same layer count, else spell the range out.
        layer_counts = {layout.layers[p] for p in rect.planes}
        num_layers = layer_counts.pop() if len(layer_counts) == 1 else -1
        steps = format_selector(rect.steps, layout.num_steps)
        layers = format_selector(rect.layers, num_layers)
        lists = _block_lists_of(family, kinds, scope_kinds) if kinds != scope_kinds else None
        name_parts = [precision]
        if components != scope_components:
            name_parts.append("-".join(components))
        if kinds != scope_kinds:
            name_parts.append("-".join(lists or kinds))
        if steps != "all":
            name_parts.append(f"steps-{_compact(rect.steps)}")
        if layers != "all":
            name_parts.append(f"layers-{_compact(rect.layers)}")
        if steps == "all" and layers == "all":
            name_parts.append("everywhere")
        name = "-".join(name_parts)
        if len(name) > 56:
            name = f"{precision}-cells-{len(rules) + 1}"
        base, suffix = name, 2
        while name in used:
            name, suffix = f"{base}-{suffix}", suffix + 1
        used.add(name)
        rules.append(SuggestedRule(
            name=name, why=_why(rect, precision, sensitivity, budget), precision=precision,
            components=None if components == scope_components else tuple(components),
            kinds=None if kinds == scope_kinds or lists else tuple(kinds), steps=steps, layers=layers,
            block_lists=lists,
        ))
    return rules


def _block_lists_of(family: Family, kinds: list[str], scope_kinds: list[str]) -> tuple[str, ...] | None:
    """The block lists that hold exactly these of the scope's kinds, in the family's order, when the family has
    several lists (Flux.1: `transformer_blocks`, `single_transformer_blocks`): a rule then reads as the blocks it
    covers, as a person writes it; None when a list would select other kinds too, or the family has one list."""
    if len(family.block_list_names) < 2:
        return None
    lists = {family.kind(kind).block_list for kind in kinds}
    if sorted(k for k in scope_kinds if family.kind(k).block_list in lists) != sorted(kinds):
        return None
    return tuple(name for name in family.block_list_names if name in lists)


def _yaml_string(text: str) -> str:
    # JSON string syntax is valid YAML double-quoted syntax; quoting every string avoids YAML 1.1 traps.
    return json.dumps(text, ensure_ascii=False)


def _yaml_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(items) + "]"


def _masked_in(sensitivity: Sensitivity, kinds: Sequence[str]) -> list[str] | None:
    """The kinds among `kinds` that can carry an attention mask in the measured model or had calls the kernel
    could not take during calibration; None when the file does not say (format 1)."""
    masked = sensitivity.masked_kinds
    if masked is None:
        return None
    return [kind for kind in kinds if kind in masked or (sensitivity.mask_calls(kind) or {}).get("unservable_calls")]


def _kind_calls(sensitivity: Sensitivity, kind: str) -> str:
    calls = sensitivity.mask_calls(kind)
    assert calls is not None
    measured = sum(c.calls for c in sensitivity.cells.values() if c.kind == kind)
    text = (f"#   {kind}: {calls['packed_calls']} of {measured} measured calls ran packed (padding mask), "
            f"{calls['unservable_calls']} could not be served")
    reason = calls.get("unservable_reason")
    return f"{text} ({reason})." if reason else f"{text}."


def _comment(text: str) -> list[str]:
    return ["# " + line for line in textwrap.wrap(text, width=114, break_long_words=False, break_on_hyphens=False)]


def _fallback_comment(sensitivity: Sensitivity, fallback: str, chosen: bool, quantized_kinds: list[str]) -> list[str]:
    """Comment lines above `fallback:` saying why it is what it is; none for a model that masks no kind (so
    Wan's, Flux's and CogVideoX's recipes read as before masks were recorded)."""
    masked = _masked_in(sensitivity, quantized_kinds)
    if masked is None:
        if chosen:
            return []
        return _comment(
            "fallback: error: this sensitivity file (format 1) does not record which attention kinds can carry a "
            "mask. If calls of a quantized kind carry one the kernel cannot serve exactly (not padding), the run "
            "stops with UnservableCallError: then set `fallback: native`, or re-run qcompile calibrate and suggest.")
    if not masked:
        outside = [kind for kind in sensitivity.masked_kinds or () if kind not in quantized_kinds]
        if not outside or fallback != "error":
            return []
        return _comment(f"fallback: error: {', '.join(outside)} can carry an attention mask in this model but "
                        "is not quantized here; no kind the recipe quantizes carries one.")
    declared = [kind for kind in masked if kind in (sensitivity.masked_kinds or ())]
    refused = [kind for kind in masked if kind not in declared]
    why = "; ".join(part for part in (
        f"{', '.join(declared)} can carry an attention mask in this model" if declared else "",
        f"{', '.join(refused)} had calls the quantized kernel could not take during calibration" if refused else "",
    ) if part)
    if fallback == "native":
        text = (f"fallback: native: {why}. The kernel serves a padding mask exactly (packed); a call whose mask it "
                "cannot serve exactly runs native instead, counted as fallback in the report, where `fallback: "
                "error` would stop the run (UnservableCallError). Calibration:")
    else:
        text = (f"fallback: error, as asked, though {why}: a call whose mask the kernel cannot serve exactly stops "
                "the run with UnservableCallError (`fallback: native` runs it native, counted in the report). "
                "Calibration:")
    return [*_comment(text), *(_kind_calls(sensitivity, kind) for kind in masked)]


def suggest_recipe(
    sensitivity: Sensitivity, budget: Budget, *, source_name: str = "sensitivity.json", fallback: str | None = None,
    schema_ref: str = RECIPE_SCHEMA_URL, dtype: str | None = None,
) -> Suggestion:
    """The recipe text meeting `budget` with the most FP8 (see the module docstring), plus facts about it.

    `fallback`: the recipe's `fallback`; None chooses it from the file (step 4 of the module docstring).

    `schema_ref` goes in the first line for editors (`# yaml-language-server: $schema=...`); the CLI passes
    the path of schemas/recipe.schema.json relative to the written file, as the shipped recipes do.
    `dtype`: the recipe's dtype; it must be the one the sensitivity file measured (None: that one), since the
    measured errors are that format's.
    """
    if dtype is not None and dtype != sensitivity.dtype:
        raise SensitivityError(
            f"the sensitivity file measured {sensitivity.dtype}, not {dtype}: its errors say nothing about {dtype}. "
            f"Measure it with: qcompile calibrate ... --dtype {dtype}"
        )
    fp8 = choose_fp8_cells(sensitivity, budget)
    component_names = [name for name, _ in sensitivity.components]
    scope_components = [c for c in component_names if any(k[0] == c for k in fp8)]
    scope_kinds = [k for k in sensitivity.attention_kinds if any(key[1] == k for key in fp8)]
    if not fp8:
        # Nothing may run FP8: an empty scope is not expressible, so keep one kind in scope, all native.
        scope_components, scope_kinds = component_names, [sensitivity.attention_kinds[-1]]
        default_fp8, rects = False, []
    else:
        scope = [(c, k) for c in scope_components for k in scope_kinds]
        default_fp8, rects = _best_cover(sensitivity, fp8, scope)
    default = "fp8" if default_fp8 else "native"
    precision = "native" if default_fp8 else "fp8"
    quantized_kinds = scope_kinds if fp8 else []
    chosen = fallback is not None
    if fallback is None:
        fallback = "native" if _masked_in(sensitivity, quantized_kinds) else "error"
    fallback_comment = _fallback_comment(sensitivity, fallback, chosen, quantized_kinds)
    rules = _rules(rects, precision, scope_components, scope_kinds, sensitivity, budget)

    measured = list(sensitivity.cells.values())
    total_flops = sum(c.flops for c in measured)
    fp8_flops = sum(sensitivity.cells[k].flops for k in fp8)
    share = fp8_flops / total_flops if total_flops else 0.0
    worst_cos = min((sensitivity.cells[k].cos_sim_worst for k in fp8), default=None)
    worst_rel = max((sensitivity.cells[k].rel_l1_worst for k in fp8), default=None)
    text = _render(sensitivity, budget, source_name, fallback, fallback_comment, schema_ref, scope_components,
                   scope_kinds, default, rules, len(fp8), len(measured), share, worst_cos, worst_rel)
    return Suggestion(
        text=text, budget=budget, fp8_cells=fp8, measured_cells=len(measured), fp8_flop_share=share,
        worst_fp8_cos_sim=worst_cos, worst_fp8_rel_l1=worst_rel, rules=tuple(rules), default=default,
        fallback=fallback,
    )


def _format_numerics_yaml(dtype: str, numerics) -> str:
    """The measured numerics keys the format has beyond the three every format has (int8_per_tensor's v_rotation,
    p_scale, scale_scope), as recipe flow-mapping items, in the format's order (qcompiler/formats/<dtype>.py)."""
    common = ("hadamard_rotation", "rotation_seed", "k_mean_subtraction")
    items = [(key, numerics[key]) for key in get_format(dtype).recipe_keys if key not in common and key in numerics]
    return "".join(f", {key}: {str(value).lower() if isinstance(value, bool) else value}" for key, value in items)


def _render(sensitivity: Sensitivity, budget: Budget, source_name: str, fallback: str, fallback_comment: list[str],
            schema_ref: str, scope_components: list[str],
            scope_kinds: list[str], default: str, rules: list[SuggestedRule], fp8_count: int, measured_count: int,
            share: float, worst_cos: float | None, worst_rel: float | None) -> str:
    measured = sensitivity.measured
    numerics = sensitivity.numerics
    variant = f" --variant {sensitivity.variant}" if sensitivity.variant else ""
    quantized = quantized_name(sensitivity.dtype)
    worst = (f"worst {quantized} call: cos-sim {worst_cos:.6f}, rel-L1 {worst_rel:.4g}" if worst_cos is not None
             else f"no {quantized} cell")
    lines = [
        f"# yaml-language-server: $schema={schema_ref}",
        f"# Written by `qcompile suggest {source_name} {budget.flag()}`: {budget.describe()}.",
        f"# Measured on {sensitivity.family_name}{' (' + sensitivity.variant + ' variant)' if sensitivity.variant else ''}"
        f" with {measured['backend']} on {measured['device']}, {measured['samples']} sample(s), "
        f"seeds {', '.join(str(s) for s in measured['seeds'])}.",
        f"# Result: {fp8_count} of {measured_count} measured cells on {quantized} ({share:.1%} of attention FLOPs); {worst}.",
        f"# Compile: qcompile THIS.yaml{variant} -o plan.json",
        "version: 1",
        f"family: {_yaml_string(sensitivity.family_name)}",
        f"num_inference_steps: {sensitivity.num_inference_steps}",
        f"dtype: {sensitivity.dtype}",
        "numerics: {"
        f"hadamard_rotation: {str(numerics['hadamard_rotation']).lower()}, "
        f"rotation_seed: {numerics['rotation_seed']}, "
        f"k_mean_subtraction: {str(numerics['k_mean_subtraction']).lower()}"
        + _format_numerics_yaml(sensitivity.dtype, numerics) +
        "}",
        *fallback_comment,
        f"fallback: {fallback}",
        f"attention_kinds: {_yaml_list(scope_kinds)}",
        f"components: {_yaml_list(scope_components)}",
        f"default: {default}",
    ]
    if not rules:
        lines.append("rules: []")
    else:
        lines.append("rules:")
        for rule in rules:
            lines.append(f"  - name: {rule.name}")
            lines.append(f"    why: {_yaml_string(rule.why)}")
            if rule.components is not None:
                lines.append(f"    components: {_yaml_list(rule.components)}")
            if rule.kinds is not None:
                lines.append(f"    attention_kinds: {_yaml_list(rule.kinds)}")
            if rule.block_lists is not None:
                lines.append(f"    block_lists: {_yaml_list(rule.block_lists)}")
            lines.append(f"    steps: {_yaml_string(rule.steps)}")
            lines.append(f"    layers: {_yaml_string(rule.layers)}")
            lines.append(f"    precision: {rule.precision}")
    return "\n".join(lines) + "\n"


def plan_fp8_cells(tables: dict[Plane, Sequence[Sequence[bool]]]) -> frozenset[CellKey]:
    """Every FP8 cell of a plan's tables, as (component, kind, step, layer)."""
    return frozenset(
        (component, kind, s, layer)
        for (component, kind), table in tables.items()
        for s, row in enumerate(table)
        for layer, fp8 in enumerate(row)
        if fp8
    )


def verify_suggestion(suggestion: Suggestion, sensitivity: Sensitivity, plan_tables: dict) -> None:
    """Raise SuggestError unless the compiled plan puts exactly the chosen cells (among measured ones) on FP8."""
    planned = {key for key in plan_fp8_cells(plan_tables) if key in sensitivity.cells}
    if planned != set(suggestion.fp8_cells):
        extra = sorted(planned - suggestion.fp8_cells)[:3]
        missing = sorted(suggestion.fp8_cells - planned)[:3]
        raise SuggestError(
            f"internal error: the generated recipe's plan differs from the chosen cells (extra FP8 {extra}, "
            f"missing {missing}); please report this with the sensitivity file"
        )
