"""What each attention backend serves, torch-free: qcompiler/backends.json, generated from the backends' own
registrations (`@register_backend` in runtime/backends/<name>.py) by `python -m runtime.backends.manifest --write`;
tests/runtime/backends/test_manifest.py fails when it is stale.

`qcompile lint` (QC153), the CLI's `--backend` choices and the docs' table of backends read it, so they say what
the runtime's selection says, in the same words, without importing torch. `HeadDims` is the one record of the head
dims a kernel takes: the runtime's backends declare theirs with it and the manifest stores it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from qcompiler.formats import get_format

MANIFEST_FORMAT = 1
MANIFEST_FILE = "backends.json"


@dataclass(frozen=True)
class HeadDims:
    """The head dims one attention kernel takes: those in `exactly`, or (when `exactly` is empty) the multiples of
    `multiple_of`, which must also be powers of two when the plan rotates (`power_of_two_if_rotated`)."""

    exactly: tuple[int, ...] = ()
    multiple_of: int = 1
    power_of_two_if_rotated: bool = False
    why: str = ""  # the kernel's words for `multiple_of`, shown in messages

    def reason(self, head_dim: int, dtype: str, rotated: bool) -> str | None:
        """None when the kernel takes `head_dim`, else why not (names the dims it takes)."""
        if self.exactly:
            if head_dim in self.exactly:
                return None
            return f"head dim {head_dim} is not one the {get_format(dtype).label} attention kernel takes ({self.describe(rotated)})"
        if head_dim % self.multiple_of:
            return f"head dim {head_dim} is not a multiple of {self.multiple_of} ({self.why})"
        if rotated and self.power_of_two_if_rotated and head_dim & (head_dim - 1):
            return f"head dim {head_dim} is not a power of two, which the Hadamard rotations need"
        return None

    def describe(self, rotated: bool) -> str:
        """The dims it takes, in words: "64 or 128", "multiples of 32"."""
        if self.exactly:
            return " or ".join(map(str, self.exactly))
        if rotated and self.power_of_two_if_rotated:
            powers = [self.multiple_of * 2**n for n in range(4)]
            return f"powers of two from {self.multiple_of} ({', '.join(map(str, powers))}, ...)"
        return f"multiples of {self.multiple_of}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["exactly"] = list(self.exactly)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HeadDims:
        return cls(exactly=tuple(data.get("exactly", ())), multiple_of=data.get("multiple_of", 1),
                   power_of_two_if_rotated=data.get("power_of_two_if_rotated", False), why=data.get("why", ""))


@dataclass(frozen=True)
class BackendManifestEntry:
    """One backend as the manifest records it (the torch-free half of its registration)."""

    name: str
    aliases: tuple[str, ...]
    dtypes: tuple[str, ...]  # the plan dtypes it runs; () for `native`
    head_dims: Mapping[str, HeadDims]  # per dtype it runs
    pv_precisions: tuple[str, ...]
    devices: tuple[str, ...]
    masks: tuple[str, ...]
    context_parallel: bool
    auto_order: int | None  # None: never tried by `auto`
    summary: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "aliases": list(self.aliases), "dtypes": list(self.dtypes),
            "head_dims": {dtype: dims.to_json() for dtype, dims in self.head_dims.items()},
            "pv_precisions": list(self.pv_precisions), "devices": list(self.devices), "masks": list(self.masks),
            "context_parallel": self.context_parallel, "auto_order": self.auto_order, "summary": self.summary,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BackendManifestEntry:
        return cls(
            name=data["name"], aliases=tuple(data["aliases"]), dtypes=tuple(data["dtypes"]),
            head_dims={dtype: HeadDims.from_json(dims) for dtype, dims in data["head_dims"].items()},
            pv_precisions=tuple(data["pv_precisions"]), devices=tuple(data["devices"]), masks=tuple(data["masks"]),
            context_parallel=data["context_parallel"], auto_order=data["auto_order"], summary=data["summary"],
        )


def render_manifest(entries: list[BackendManifestEntry]) -> str:
    """The manifest file's text for `entries` (in the registry's order)."""
    data = {"manifest_format": MANIFEST_FORMAT,
            "generated_by": "python -m runtime.backends.manifest --write",
            "backends": [entry.to_json() for entry in entries]}
    text = json.dumps(data, indent=2)
    # Lists of names and numbers on one line each (none of them holds a comma).
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
                  text) + "\n"


def parse_manifest(text: str) -> tuple[BackendManifestEntry, ...]:
    data = json.loads(text)
    if data.get("manifest_format") != MANIFEST_FORMAT:
        raise ValueError(f"{MANIFEST_FILE}: manifest_format {data.get('manifest_format')!r}, expected "
                         f"{MANIFEST_FORMAT}; regenerate it with `python -m runtime.backends.manifest --write`")
    return tuple(BackendManifestEntry.from_json(entry) for entry in data["backends"])


def manifest_text() -> str:
    """The committed manifest's text (package data next to this module)."""
    return resources.files("qcompiler").joinpath(MANIFEST_FILE).read_text(encoding="utf-8")


@functools.cache
def manifest() -> tuple[BackendManifestEntry, ...]:
    """Every registered backend, in the registry's order (never-auto ones by name, then `auto`'s order)."""
    return parse_manifest(manifest_text())


def backend_names() -> tuple[str, ...]:
    """Every name `backend=` / `--backend` takes: "auto", the backends, then their aliases."""
    entries = manifest()
    return ("auto", *(e.name for e in entries), *(alias for e in entries for alias in e.aliases))


def quantized_backend_names() -> tuple[str, ...]:
    """The names that serve quantized cells (every name but `native`'s): the CLI's `--backend` choices."""
    return tuple(name for name in backend_names()
                 if name == "auto" or next(e for e in manifest() if name in (e.name, *e.aliases)).dtypes)


def rotates(numerics: dict) -> bool:
    """Whether a plan's (or recipe's resolved) `numerics` applies a Hadamard rotation to any input."""
    return bool(numerics.get("hadamard_rotation") or numerics.get("v_rotation"))


def serving_backends(dtype: str, head_dim: int, rotated: bool, entries: tuple[BackendManifestEntry, ...] | None = None) -> tuple[str, ...]:
    """The backends that run `dtype` at `head_dim`, in the registry's order. `entries`: the backends to consider
    (default: the manifest's; the runtime passes its live registry's)."""
    return tuple(e.name for e in (manifest() if entries is None else entries)
                 if dtype in e.head_dims and e.head_dims[dtype].reason(head_dim, dtype, rotated) is None)


def who_serves(dtype: str, rotated: bool, entries: tuple[BackendManifestEntry, ...] | None = None) -> str:
    """Which backends run `dtype` at which head dims: "reference, npu-torch-fia take head dim 64 or 128"."""
    groups: dict[str, list[str]] = {}
    for entry in manifest() if entries is None else entries:
        if dtype in entry.head_dims:
            groups.setdefault(entry.head_dims[dtype].describe(rotated), []).append(entry.name)
    return "; ".join(f"{', '.join(names)} take{'s' if len(names) == 1 else ''} head dim {dims}"
                     for dims, names in groups.items())


def no_backend_reason(dtype: str, head_dim: int, rotated: bool, entries: tuple[BackendManifestEntry, ...] | None = None) -> str | None:
    """None when some backend runs `dtype` at `head_dim`, else a sentence that says which backends take which
    head dims for it."""
    if serving_backends(dtype, head_dim, rotated, entries):
        return None
    return f"no attention backend runs {dtype} at head dim {head_dim} ({who_serves(dtype, rotated, entries)})"


TABLE_BEGIN = "<!-- backends table: generated from qcompiler/backends.json by `python -m runtime.backends.manifest --write` -->"
TABLE_END = "<!-- end of backends table -->"


def _head_dims_cell(entry: BackendManifestEntry) -> str:
    groups: dict[str, list[str]] = {}
    for dtype, dims in entry.head_dims.items():
        words = dims.describe(rotated=False)
        if dims.power_of_two_if_rotated:
            words += " (powers of two with rotations)"
        groups.setdefault(words, []).append(dtype)
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"{', '.join(f'`{d}`' for d in dtypes)}: {words}" for words, dtypes in groups.items())


def markdown_table(entries: tuple[BackendManifestEntry, ...] | None = None) -> str:
    """The docs' table of backends (docs/npu-backends.md), between its markers."""
    entries = manifest() if entries is None else entries
    ordinal = {e.name: n for n, e in enumerate(sorted((e for e in entries if e.auto_order is not None),
                                                       key=lambda e: e.auto_order), start=1)}
    rows = [TABLE_BEGIN, "",
            "| backend | dtypes | head dims | devices | masks | context parallel | tried by `auto` | what it is |",
            "|---|---|---|---|---|---|---|---|"]
    for e in entries:
        name = f"`{e.name}`" + (f" (alias {', '.join(f'`{a}`' for a in e.aliases)})" if e.aliases else "")
        dtypes = ", ".join(f"`{d}`" for d in e.dtypes) or "-"
        head_dims = _head_dims_cell(e) if e.head_dims else "any"
        auto = {1: "1st", 2: "2nd", 3: "3rd"}.get(ordinal.get(e.name, 0), f"{ordinal.get(e.name)}th")
        rows.append(f"| {name} | {dtypes} | {head_dims} | {', '.join(e.devices)} | {', '.join(e.masks)} | "
                    f"{'Ulysses' if e.context_parallel else 'no'} | {auto if e.name in ordinal else 'never'} | "
                    f"{e.summary} |")
    return "\n".join([*rows, "", TABLE_END])
