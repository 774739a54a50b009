"""The selector grammar for steps and layers.

A selector is a YAML string of comma-separated terms, or a YAML list of ints. Terms (all indices 0-based,
all ranges inclusive at both ends, as in vllm-omni, `cut` and Slurm):

    7          one index
    2-5        indices 2, 3, 4, 5 (a descending range such as 5-2 is an error)
    30-        from 30 to the last index
    all        every index
    first 3    the first 3 indices;  last 3: the last 3
    0-39/4     every 4th index of a range (also `30-/2`, `all/2`): start, start+4, ...
    first 15%  steps only: the first ceil(15 * N / 100) steps of N (rounded UP, so any positive percentage
               selects at least one step); `last 15%` likewise from the end

Every index is checked against the axis length; a selector that selects nothing is an error.
The grammar is documented for users in docs/recipes.md.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

MAX_SELECTOR_LENGTH = 1000  # longer strings are not hand-written selectors
MAX_INDEX_DIGITS = 9

# re.ASCII: `\d` is 0-9 only. Without it Python's `\d` also matches Arabic-Indic, fullwidth and other Unicode
# digits, which int() then reads as numbers; selectors refuse those instead (see _refuse_non_ascii).
_NUMBER = rf"(\d{{1,{MAX_INDEX_DIGITS}}})"
_RANGE = re.compile(rf"^{_NUMBER}\s*-\s*{_NUMBER}?\Z", re.ASCII)
_SINGLE = re.compile(rf"^{_NUMBER}\Z", re.ASCII)
_FIRST_LAST = re.compile(rf"^(first|last)\s+{_NUMBER}\Z", re.ASCII)
_FIRST_LAST_PERCENT = re.compile(r"^(first|last)\s+(\d{1,3}(?:\.\d{1,6})?)\s*%\Z", re.ASCII)
_STRIDE = re.compile(r"^(.*?)\s*/\s*(\d{1,9})\Z", re.ASCII)
_NEGATIVE = re.compile(r"^-\s*\d", re.ASCII)


class SelectorError(Exception):
    """A selector is malformed or out of range. `offset` is the 0-based character (or list item) at fault."""

    def __init__(self, code: str, message: str, hint: str, offset: int = 0, list_index: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.offset = offset
        self.list_index = list_index

    def __str__(self) -> str:
        return self.message


def select(value: Any, length: int, axis: str) -> frozenset[int]:
    """Indices in range(length) selected by `value` (a selector string or a list of ints).

    axis is "steps" or "layers": it appears in messages, and percentages are allowed for steps only.
    """
    if isinstance(value, bool) or value is None:
        raise SelectorError("QC134", f"{axis} selector must be a string or a list of ints, found {_type_name(value)}",
                            f'write e.g. "0-2" or [0, 1, 2]; valid {axis}: 0-{length - 1}')
    if isinstance(value, int):
        raise SelectorError("QC134", f"{axis} selector must be a string or a list of ints, found the bare number {value}",
                            f'write "{value}" (quoted) or [{value}]')
    if isinstance(value, list):
        return _select_list(value, length, axis)
    if not isinstance(value, str):
        raise SelectorError("QC134", f"{axis} selector must be a string or a list of ints, found {_type_name(value)}",
                            f'write e.g. "0-2" or [0, 1, 2]; valid {axis}: 0-{length - 1}')
    return _select_string(value, length, axis)


def _type_name(value: Any) -> str:
    return {bool: "a boolean", type(None): "nothing (null)", float: "a float", dict: "a mapping"}.get(type(value), type(value).__name__)


def _select_list(items: list, length: int, axis: str) -> frozenset[int]:
    if not items:
        raise SelectorError("QC133", f"{axis} selector is an empty list and selects nothing",
                            f"list at least one index (valid {axis}: 0-{length - 1}) or remove the rule")
    chosen: set[int] = set()
    for position, item in enumerate(items):
        if isinstance(item, bool) or not isinstance(item, int):
            raise SelectorError("QC134", f"{axis} list item {position} is {_type_name(item)}, not an int",
                                "list plain integers, e.g. [0, 1, 2], or use a string such as \"0-2\"", list_index=position)
        if item < 0 or item >= length:
            raise SelectorError("QC131", f"{axis} index {item} is out of range: the model has {length} {axis} (valid: 0-{length - 1})",
                                f"use an index from 0 to {length - 1}; `last N` counts from the end", list_index=position)
        chosen.add(item)
    return frozenset(chosen)


def _select_string(text: str, length: int, axis: str) -> frozenset[int]:
    if len(text) > MAX_SELECTOR_LENGTH:
        raise SelectorError("QC130", f"{axis} selector is {len(text)} characters long", "use ranges such as \"0-39\"")
    if not text.strip():
        raise SelectorError("QC133", f"{axis} selector is empty and selects nothing", f'write e.g. "all" or "0-{length - 1}"')
    _refuse_non_ascii(text, axis)
    chosen: set[int] = set()
    offset = 0
    for raw_term in text.split(","):
        stripped = raw_term.strip()
        term_offset = offset + (len(raw_term) - len(raw_term.lstrip()))
        if not stripped:
            raise SelectorError("QC130", f"{axis} selector has an empty item between commas", "remove the extra comma", term_offset)
        chosen |= _select_term(stripped, length, axis, term_offset)
        offset += len(raw_term) + 1
    return frozenset(chosen)


def _refuse_non_ascii(text: str, axis: str) -> None:
    """Selectors are ASCII: a Unicode digit (Arabic-Indic, fullwidth, ...) or any other non-ASCII character is an
    error at its offset, never read as a number."""
    for offset, char in enumerate(text):
        if not char.isascii():
            name = unicodedata.name(char, f"U+{ord(char):04X}")
            kind = "digit" if char.isdigit() else "character"
            raise SelectorError("QC130", f"{axis} selector contains the non-ASCII {kind} {char!r} ({name})",
                                "write indices with the ASCII digits 0-9", offset)


def _out_of_range(index: int, length: int, axis: str, offset: int) -> SelectorError:
    return SelectorError(
        "QC131", f"{axis} index {index} is out of range: the model has {length} {axis} (valid: 0-{length - 1})",
        f"use indices from 0 to {length - 1}; `last N` and open ranges such as \"{max(length - 3, 0)}-\" count from the end", offset,
    )


def _select_term(term: str, length: int, axis: str, offset: int) -> frozenset[int]:
    stride = 1
    stride_match = _STRIDE.match(term)
    if stride_match:
        term, stride = stride_match.group(1).strip(), int(stride_match.group(2))
        if stride < 1:
            raise SelectorError("QC130", f"{axis} stride must be at least 1, found /{stride}", "write e.g. \"0-39/2\"", offset)
        if not (term == "all" or _RANGE.match(term)):
            raise SelectorError("QC130", f"a stride /N applies to a range or `all`, not to {term!r}",
                                "write e.g. \"0-39/2\", \"10-/2\" or \"all/2\"", offset)
    if term == "all":
        return frozenset(range(0, length, stride))
    match = _SINGLE.match(term)
    if match:
        index = int(match.group(1))
        if index >= length:
            raise _out_of_range(index, length, axis, offset)
        return frozenset({index})
    match = _RANGE.match(term)
    if match:
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) is not None else length - 1
        if start >= length:
            raise _out_of_range(start, length, axis, offset)
        if end >= length:
            raise _out_of_range(end, length, axis, offset + term.index("-") + 1)
        if end < start:
            raise SelectorError("QC132", f"{axis} range {term} is descending", f"write it as \"{end}-{start}\" (ranges are inclusive, low-high)", offset)
        return frozenset(range(start, end + 1, stride))
    match = _FIRST_LAST.match(term)
    if match:
        count = int(match.group(2))
        return _first_last(match.group(1), count, length, axis, offset, term)
    match = _FIRST_LAST_PERCENT.match(term)
    if match:
        if axis != "steps":
            raise SelectorError("QC130", f"percentages select steps only, not {axis}", f"write a count, e.g. \"first 3\" (the model has {length} {axis})", offset)
        # Exact decimal arithmetic on the digits: P = whole.frac = scaled / 10**len(frac).
        whole, _, frac = match.group(2).partition(".")
        scale = 10 ** len(frac)
        scaled = int(whole + frac)
        if not 0 < scaled <= 100 * scale:
            raise SelectorError("QC130", f"percentage must be above 0 and at most 100, found {match.group(2)}%", "write e.g. \"first 15%\"", offset)
        count = -((-scaled * length) // (100 * scale))  # ceil(P * length / 100), exact
        return _first_last(match.group(1), int(count), length, axis, offset, term)
    if term.startswith("-") or _NEGATIVE.match(term):
        raise SelectorError("QC130", f"negative {axis} index in {term!r}", "indices start at 0; use `last N` to count from the end", offset)
    raise SelectorError(
        "QC130", f"cannot read {axis} selector item {term!r}",
        "items are: N, A-B (inclusive), A-, all, first N, last N, A-B/S" + (", first P%, last P%" if axis == "steps" else ""),
        offset,
    )


def _first_last(which: str, count: int, length: int, axis: str, offset: int, term: str) -> frozenset[int]:
    if count == 0:
        raise SelectorError("QC133", f"{term!r} selects nothing", "use a count of at least 1, or remove the item", offset)
    if count > length:
        raise SelectorError("QC131", f"{term!r} asks for {count} {axis} but the model has {length}",
                            f"use at most {length}, or `all`", offset)
    return frozenset(range(count)) if which == "first" else frozenset(range(length - count, length))
