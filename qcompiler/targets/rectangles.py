"""The largest steps x columns rectangle inside a set of safe cells: what --conservative exports.

Shared by the targets whose quantized sets are rectangles: vllm-omni (steps x layers) and MindIE-SD
(steps x attention modules). Pure data: never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping

# Past this many candidate column sets the exact search stops and a greedy search takes over (see best_rectangle).
_MAX_EXACT_CANDIDATES = 4096


def best_rectangle(rows: Mapping[int, frozenset[int]]) -> tuple[frozenset[int], frozenset[int]]:
    """The steps x layers rectangle with the most cells inside the safe cells (`rows`: step -> column indices:
layers for vllm-omni, attention modules for MindIE-SD).

    Exact when possible: the best rectangle's layer set is the intersection of its steps' layer sets, so
    the candidates are the closure of the distinct rows under intersection, each scored with every step whose
    row contains it. When that closure passes _MAX_EXACT_CANDIDATES (many distinct irregular rows), a greedy
    search takes over: start from all steps and repeatedly drop the step whose removal leaves the largest
    rectangle, keeping the best seen (and never less than the widest single step). Either way every cell of the
    result is a safe cell, which is the safety property; only optimality is lost in the greedy case. Ties go
    to more steps, then lower layers. (Scored per step; with two reachable experts a step counts twice in the
    cell total, which does not change which rectangle is safe.)
    """
    if not rows:
        return frozenset(), frozenset()
    distinct = set(rows.values())
    candidates = set(distinct)
    frontier = set(distinct)
    while frontier:
        grown = {a & b for a in frontier for b in distinct} - candidates
        candidates |= grown
        frontier = grown
        if len(candidates) > _MAX_EXACT_CANDIDATES:
            return greedy_rectangle(rows)
    scored = []
    for layers in candidates:
        steps = frozenset(step for step, row in rows.items() if layers <= row)
        scored.append((len(steps) * len(layers), len(steps), _rank(layers), steps, layers))
    best = max(scored, key=lambda item: item[:3])
    return best[3], best[4]


def greedy_rectangle(rows: Mapping[int, frozenset[int]]) -> tuple[frozenset[int], frozenset[int]]:
    steps = set(rows)
    # A single step's row is always a rectangle; starting from the widest one means greedy never returns less.
    widest = max(sorted(rows), key=lambda step: len(rows[step]))
    best = (len(rows[widest]), frozenset({widest}), rows[widest])
    while steps:
        layers = frozenset.intersection(*(rows[s] for s in steps))
        if len(steps) * len(layers) > best[0]:
            best = (len(steps) * len(layers), frozenset(steps), layers)

        def remaining_area(dropped: int) -> tuple[int, int]:
            rest = steps - {dropped}
            kept = frozenset.intersection(*(rows[s] for s in rest)) if rest else frozenset()
            return len(rest) * len(kept), -dropped

        steps.remove(max(steps, key=remaining_area))
    return best[1], best[2]


def _rank(layers: frozenset[int]) -> tuple[int, ...]:
    # Deterministic tie-break between equal-area layer sets: prefer the one with the lower layers.
    return tuple(-layer for layer in sorted(layers))
