"""Print diagnostics for people (text with the source line and a caret), tools (json) and GitHub (annotations)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from qcompiler.errors import Diagnostic

FORMATS = ("text", "json", "github")


def _source_line(path: str, line: int, sources: dict[str, list[str]]) -> str:
    if line <= 0:
        return ""
    if path not in sources:
        try:
            sources[path] = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            sources[path] = []
    lines = sources[path]
    return lines[line - 1] if line <= len(lines) else ""


def format_text(diagnostics: Iterable[Diagnostic], texts: dict[str, str] | None = None) -> str:
    """`file:line:col: error[CODE] message`, then the source line with a caret, then `hint: ...`."""
    sources: dict[str, list[str]] = {p: t.splitlines() for p, t in (texts or {}).items()}
    out = []
    for d in diagnostics:
        out.append(f"{d.location()}: {d.severity}[{d.code}] {d.message}")
        source = _source_line(d.path, d.line, sources)
        if source:
            gutter = f"{d.line:>4} | "
            out.append(gutter + source)
            out.append(" " * (len(gutter) + max(d.column - 1, 0)) + "^")
        if d.hint:
            out.append(f"  hint: {d.hint}")
    return "\n".join(out) + ("\n" if out else "")


def format_json(diagnostics: Iterable[Diagnostic]) -> str:
    return json.dumps([d.to_dict() for d in diagnostics], indent=2, sort_keys=True) + "\n"


def _escape_github(value: str, *, property_value: bool = False) -> str:
    # GitHub workflow-command escaping: % CR LF always, and : , in property values.
    value = value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if property_value:
        value = value.replace(":", "%3A").replace(",", "%2C")
    return value


def format_github(diagnostics: Iterable[Diagnostic]) -> str:
    """GitHub Actions annotations: `::error file=F,line=L,col=C,title=CODE::message (hint)`."""
    out = []
    for d in diagnostics:
        props = [f"file={_escape_github(d.path, property_value=True)}"]
        if d.line > 0:
            props.append(f"line={d.line}")
            props.append(f"col={max(d.column, 1)}")
        props.append(f"title={_escape_github('qcompile ' + d.code, property_value=True)}")
        message = d.message + (f" (hint: {d.hint})" if d.hint else "")
        out.append(f"::{d.severity} {','.join(props)}::{_escape_github(message)}")
    return "\n".join(out) + ("\n" if out else "")


def format_diagnostics(diagnostics: list[Diagnostic], fmt: str, texts: dict[str, str] | None = None) -> str:
    if fmt == "json":
        return format_json(diagnostics)
    if fmt == "github":
        return format_github(diagnostics)
    return format_text(diagnostics, texts)
