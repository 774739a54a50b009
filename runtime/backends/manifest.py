"""Writes (or checks) the torch-free manifest of the registered backends, qcompiler/backends.json, and the docs'
table of backends generated from it (docs/npu-backends.md, between its markers).

    python -m runtime.backends.manifest --write    # after adding or changing a backend's @register_backend
    python -m runtime.backends.manifest --check    # exit 1 when either is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qcompiler.backend_table import TABLE_BEGIN, TABLE_END, markdown_table, parse_manifest, render_manifest
from qcompiler.fileio import write_text_atomically
from runtime.backends.registry import backends

MANIFEST_PATH = Path(__file__).resolve().parents[2] / "qcompiler" / "backends.json"
DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "npu-backends.md"


def build_manifest() -> str:
    """The manifest's text for the backends registered now."""
    return render_manifest([spec.manifest_entry() for spec in backends().values()])


def document_with_table(text: str, table: str) -> str:
    """`text` (the doc) with the part between the table markers replaced by `table`."""
    if text.count(TABLE_BEGIN) != 1 or text.count(TABLE_END) != 1:
        raise ValueError(f"{DOC_PATH.name}: expected one {TABLE_BEGIN!r} line and one {TABLE_END!r} line")
    before, rest = text.split(TABLE_BEGIN)
    after = rest.split(TABLE_END)[1]
    return before + table + after


def stale_files() -> list[Path]:
    """The generated files that differ from what the registrations give (none when everything is fresh)."""
    manifest = build_manifest()
    stale = [] if MANIFEST_PATH.is_file() and MANIFEST_PATH.read_text(encoding="utf-8") == manifest else [MANIFEST_PATH]
    if DOC_PATH.is_file():  # an installed package has no docs/
        doc = DOC_PATH.read_text(encoding="utf-8")
        if document_with_table(doc, markdown_table(parse_manifest(manifest))) != doc:
            stale.append(DOC_PATH)
    return stale


def write() -> list[Path]:
    """Rewrite the stale generated files; returns them."""
    stale = stale_files()
    manifest = build_manifest()
    if MANIFEST_PATH in stale:
        write_text_atomically(MANIFEST_PATH, manifest)
    if DOC_PATH in stale:
        doc = DOC_PATH.read_text(encoding="utf-8")
        write_text_atomically(DOC_PATH, document_with_table(doc, markdown_table(parse_manifest(manifest))))
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.backends.manifest", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="rewrite qcompiler/backends.json and the docs' table")
    action.add_argument("--check", action="store_true", help="exit 1 when either is stale")
    args = parser.parse_args(argv)
    if args.write:
        written = write()
        print("\n".join(f"wrote {path}" for path in written) or "up to date")
        return 0
    stale = stale_files()
    for path in stale:
        print(f"{path} is stale: run `python -m runtime.backends.manifest --write`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
