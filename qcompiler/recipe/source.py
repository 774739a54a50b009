"""Load a recipe's YAML into plain Python values while keeping where every key and value was written.

PyYAML implements YAML 1.1, whose implicit typing is a trap for recipes (`10:20` is 620, `on` is True,
`0x10` is 16, `010` is 8, `1_000` is 1000). We compose the node tree with PyYAML's safe composer and
convert scalars ourselves with YAML 1.2 core rules; a plain scalar that YAML 1.1 would have read as
something else is reported (never silently reinterpreted). Anchors/aliases, explicit tags and duplicate
keys are refused, which also rules out alias bombs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from qcompiler.errors import Diagnostic
from qcompiler.fileio import InputRefused, read_regular_file

# libyaml's C loader when PyYAML was built with it (same nodes and marks, several times faster).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

PathKey = tuple  # a path into the document, e.g. ("rules", 0, "steps")

MAX_DOCUMENT_BYTES = 1_000_000  # a recipe is a page of YAML; anything bigger is not a recipe
MAX_INTEGER_DIGITS = 15
# A recipe nests 4 levels (rules -> item -> key -> list); 32 leaves room and keeps every recursive walk
# (YAML composer, our conversion, jsonschema) far from Python's recursion limit.
MAX_NESTING = 32  # far above any step/layer count or seed; keeps int() away from huge strings

_INT_12 = re.compile(r"^[-+]?(0|[1-9][0-9]*)$")
_FLOAT_12 = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_NULL_12 = {"null", "Null", "NULL", "~", ""}
_BOOL_12 = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_BOOL_WORDS_11 = re.compile(r"^(y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF)$")
_SEXAGESIMAL_11 = re.compile(r"^[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?$")
_RADIX_11 = re.compile(r"^[-+]?(0b[0-1_]+|0x[0-9a-fA-F_]+|0o?[0-7_]+)$")
_UNDERSCORE_NUMBER_11 = re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?$")


@dataclass(frozen=True)
class Mark:
    line: int  # 1-based
    column: int  # 1-based
    quoted: bool = False

class SourceDocument:
    """A parsed recipe: its values, where each value and key sits, and its text for error excerpts."""

    def __init__(self, path: str, text: str, data: Any = None) -> None:
        self.path = path
        self.text = text
        self.data = data
        self.value_marks: dict[PathKey, Mark] = {}
        self.key_marks: dict[PathKey, Mark] = {}
        # Recoverable findings of the YAML reading (duplicate keys, YAML 1.1 traps): reported together with every
        # other finding, and the values they are about (`invalid_paths`) are not checked again.
        self.errors: list[Diagnostic] = []
        self.invalid_paths: set[PathKey] = set()
        self._lines = text.splitlines()

    def clamp(self, line: int, column: int) -> tuple[int, int]:
        return clamp_position(self._lines, line, column)

    def mark_for(self, path: PathKey, *, key: bool = False) -> Mark:
        """The closest known mark for `path` (walking up to the parent when the exact one is unknown)."""
        marks = self.key_marks if key else self.value_marks
        probe = tuple(path)
        while probe:
            if probe in marks:
                return marks[probe]
            if not key and probe in self.key_marks:
                return self.key_marks[probe]
            probe = probe[:-1]
        return marks.get((), Mark(1, 1))

    def line_text(self, line: int) -> str:
        lines = self.text.splitlines()
        return lines[line - 1] if 0 < line <= len(lines) else ""


class YamlLoadError(Exception):
    def __init__(self, diagnostic: Diagnostic):
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def _fail(path: str, line: int, column: int, code: str, message: str, hint: str = "") -> YamlLoadError:
    return YamlLoadError(Diagnostic(path, line, column, "error", code, message, hint))


def clamp_position(lines: list[str], line: int, column: int) -> tuple[int, int]:
    """(line, column) moved back onto the text: YAML reports an error at the end of a truncated file one line
    past the last one (or past the end of a line), where no editor can go; the last real position is used."""
    if line <= 0:
        return line, column
    if not lines:
        return 1, 1
    if line > len(lines):
        line, column = len(lines), len(lines[-1]) + 1
    return line, max(1, min(column, len(lines[line - 1]) + 1))


def read_recipe_text(path: Path, display: str) -> str:
    """Read a recipe file as UTF-8 text, turning every way that can fail into a diagnostic. Anything but a
    regular file (a FIFO, a device) is refused without being opened."""
    if path.is_dir():
        raise _fail(display, 0, 0, "QC001", "is a directory, not a recipe file", "pass a .yaml file (qcompile lint accepts folders)")
    try:
        raw = read_regular_file(path, max_bytes=MAX_DOCUMENT_BYTES)
    except FileNotFoundError:
        raise _fail(display, 0, 0, "QC001", "no such file", "check the path; recipes are YAML files such as recipes/wan22_i2v.yaml") from None
    except InputRefused as exc:
        raise _fail(display, 0, 0, "QC001", exc.message, "pass a recipe file (.yaml)") from None
    except OSError as exc:
        raise _fail(display, 0, 0, "QC001", f"cannot read file: {exc.strerror}", "check the file's permissions") from None
    return decode_recipe_bytes(raw, display)


def decode_recipe_bytes(raw: bytes, display: str) -> str:
    if raw.startswith(b"\xef\xbb\xbf"):
        raise _fail(display, 1, 1, "QC003", "file starts with a UTF-8 byte-order mark (BOM)", "save the file as UTF-8 without BOM")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise _fail(
            display, line, column, "QC002", f"byte 0x{raw[exc.start]:02x} is not valid UTF-8", "save the file as UTF-8"
        ) from None


def parse_yaml(text: str, display: str) -> SourceDocument:
    """Parse recipe text into a SourceDocument or raise YamlLoadError with file, line and column (always a
    position inside the text). Recoverable findings are in the document's `errors`."""
    try:
        return _parse_yaml(text, display)
    except YamlLoadError as exc:
        d = exc.diagnostic
        line, column = clamp_position(text.splitlines(), d.line, d.column)
        if (line, column) == (d.line, d.column):
            raise
        raise YamlLoadError(Diagnostic(d.path, line, column, d.severity, d.code, d.message, d.hint)) from None


def _parse_yaml(text: str, display: str) -> SourceDocument:
    if text.startswith("\ufeff"):
        raise _fail(display, 1, 1, "QC003", "text starts with a byte-order mark (BOM)", "save the file as UTF-8 without BOM")
    if not text.strip() or all(line.lstrip().startswith("#") or not line.strip() for line in text.splitlines()):
        raise _fail(display, 1, 1, "QC004", "the recipe is empty", "start from a shipped recipe, e.g. recipes/wan22_i2v.yaml")
    tab = _tab_in_indentation(text)
    if tab is not None:
        raise _fail(display, tab[0], tab[1], "QC005", "tab character in indentation; YAML indents with spaces only", "replace the tab with spaces")
    try:
        _check_tokens(text, display)
        nodes = list(yaml.compose_all(text, Loader=_LOADER))  # libyaml's composer stops at 1,000 levels
    except RecursionError:  # only PyYAML's pure-Python composer (no libyaml) recurses; refuse, never crash
        raise _fail(display, 1, 1, "QC009", f"nested too deeply for YAML to read (a recipe nests {MAX_NESTING} levels at most)",
                    "is this the right file? see recipes/wan22_i2v.yaml for the layout") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = exc.problem or exc.context or "invalid YAML"
        raise _fail(display, line, column, "QC005", f"YAML syntax error: {problem}", "check indentation, colons and quotes on this line") from None
    except yaml.reader.ReaderError as exc:  # a control character: located by its offset in the text
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise _fail(display, line, column, "QC005", f"control character U+{code:04X} is not allowed in YAML",
                    "delete it, or write it as an escape (\\x01) inside a double-quoted string") from None
    except yaml.YAMLError as exc:
        raise _fail(display, 1, 1, "QC005", f"YAML error: {exc}") from None
    if len(nodes) != 1:
        where = nodes[1].start_mark if len(nodes) > 1 else None
        raise _fail(
            display, (where.line + 1) if where else 1, (where.column + 1) if where else 1, "QC005",
            f"a recipe is one YAML document, found {len(nodes)}", "remove the extra '---' separators",
        )
    root = nodes[0]
    if root is None:
        raise _fail(display, 1, 1, "QC004", "the recipe is empty", "start from a shipped recipe")
    if not isinstance(root, yaml.MappingNode):
        kind = "a list" if isinstance(root, yaml.SequenceNode) else "a single value"
        raise _fail(
            display, root.start_mark.line + 1, root.start_mark.column + 1, "QC010",
            f"the recipe must be a mapping of keys (version, family, ...), found {kind}",
            "see recipes/wan22_i2v.yaml for the layout",
        )
    document = SourceDocument(path=display, text=text, data=None)
    document.data = _convert(root, (), document)
    return document


def _tab_in_indentation(text: str) -> tuple[int, int] | None:
    for number, line in enumerate(text.splitlines(), start=1):
        indent = len(line) - len(line.lstrip(" \t"))
        if "\t" in line[:indent]:
            return number, line.index("\t") + 1
    return None


def _check_tokens(text: str, display: str) -> None:
    """Anchors, aliases and tags are refused from YAML's scanner, before any expansion happens, so an alias
    bomb costs nothing."""
    if "&" not in text and "*" not in text and "!" not in text:
        return  # no anchor, alias or tag can be written without one of these characters
    for token in yaml.scan(text, Loader=_LOADER):
        if isinstance(token, (yaml.AnchorToken, yaml.AliasToken)):
            mark = token.start_mark
            raise _fail(
                display, mark.line + 1, mark.column + 1, "QC007",
                "anchors and aliases (&name, *name) are not allowed in recipes",
                "write the value out; recipes stay short enough to read without them",
            )
        elif isinstance(token, yaml.TagToken):
            mark = token.start_mark
            raise _fail(
                display, mark.line + 1, mark.column + 1, "QC008",
                "explicit YAML tags (!!type, !name) are not allowed in recipes", "remove the tag; quote strings instead",
            )


def _mark(node: yaml.Node, doc: SourceDocument) -> Mark:
    quoted = isinstance(node, yaml.ScalarNode) and node.style in ("'", '"')
    return Mark(*doc.clamp(node.start_mark.line + 1, node.start_mark.column + 1), quoted)


def _recover(doc: SourceDocument, path: PathKey, exc: YamlLoadError) -> None:
    d = exc.diagnostic
    line, column = doc.clamp(d.line, d.column)
    doc.errors.append(Diagnostic(d.path, line, column, d.severity, d.code, d.message, d.hint))
    doc.invalid_paths.add(path)


def _convert(node: yaml.Node, path: PathKey, doc: SourceDocument) -> Any:
    doc.value_marks[path] = _mark(node, doc)
    if len(path) >= MAX_NESTING and isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        raise _fail(doc.path, node.start_mark.line + 1, node.start_mark.column + 1, "QC009",
                    f"nested more than {MAX_NESTING} levels deep; a recipe nests 4 levels at most",
                    "is this the right file? see recipes/wan22_i2v.yaml for the layout")
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            try:
                key = _convert_scalar_key(key_node, doc.path)
            except YamlLoadError as exc:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise
                key = key_node.value  # a YAML 1.1 boolean word: reported, then read as the word
                _recover(doc, (*path, key), exc)
            if key in result:
                first = doc.key_marks[(*path, key)]
                _recover(doc, (*path, key), _fail(
                    doc.path, key_node.start_mark.line + 1, key_node.start_mark.column + 1, "QC006",
                    f"duplicate key {key!r} (first written on line {first.line})",
                    "YAML would silently keep only the last one; remove one of them",
                ))
                continue
            doc.key_marks[(*path, key)] = _mark(key_node, doc)
            result[key] = _convert(value_node, (*path, key), doc)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*path, index), doc) for index, item in enumerate(node.value)]
    try:
        return _convert_scalar(node, doc.path)
    except YamlLoadError as exc:  # a YAML 1.1 trap or a huge number: reported; the value is not checked again
        _recover(doc, path, exc)
        return node.value


def _convert_scalar_key(node: yaml.Node, display: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise _fail(display, node.start_mark.line + 1, node.start_mark.column + 1, "QC005", "keys must be plain words", "")
    if node.style in (None, "") and _BOOL_WORDS_11.match(node.value):
        raise _fail(
            display, node.start_mark.line + 1, node.start_mark.column + 1, "QC102",
            f"key {node.value!r} is read by YAML 1.1 as a boolean, not as the word",
            f"quote it (\"{node.value}\") if you mean the word; no recipe key is called that",
        )
    return node.value


def _convert_scalar(node: yaml.ScalarNode, display: str) -> Any:
    text = node.value
    if node.style not in (None, ""):  # quoted or block scalar: always a string (libyaml marks plain as "")
        return text
    line, column = node.start_mark.line + 1, node.start_mark.column + 1
    if text in _NULL_12:
        return None
    if text in _BOOL_12:
        return _BOOL_12[text]
    if _INT_12.match(text):
        if len(text.lstrip("+-")) > MAX_INTEGER_DIGITS:
            raise _fail(display, line, column, "QC104", f"number {text[:20]}... has {len(text)} digits; far too large for any recipe field", "use a value in the documented range")
        return int(text)
    if _RADIX_11.match(text) or (_UNDERSCORE_NUMBER_11.match(text) and "_" in text):
        raise _fail(
            display, line, column, "QC103",
            f"YAML 1.1 reads unquoted {text} as a number in another base or with separators",
            "write plain decimal digits (e.g. 16, 1000), or quote it if you mean a string",
        )
    if _FLOAT_12.match(text):
        if len(text) > 2 * MAX_INTEGER_DIGITS:
            raise _fail(display, line, column, "QC104", f"number {text[:20]}... is far too long for any recipe field", "use a value in the documented range")
        value = float(text)
        if value != value or value in (float("inf"), float("-inf")):
            raise _fail(display, line, column, "QC104", f"{text} overflows a float", "use a value in the documented range")
        return value
    if text in (".inf", "-.inf", "+.inf", ".nan", ".NaN", ".Inf"):
        raise _fail(display, line, column, "QC104", f"{text} is not a usable number in a recipe", "use a finite number")
    if _SEXAGESIMAL_11.match(text):
        value = _sexagesimal_value(text)
        raise _fail(
            display, line, column, "QC101",
            f"YAML 1.1 reads unquoted {text} as the base-60 number {value}",
            f"write a range as a quoted string (\"{text.replace(':', '-')}\") or a list of ints",
        )
    if _BOOL_WORDS_11.match(text):
        meaning = "true" if text.lower() in ("y", "yes", "on") else "false"
        raise _fail(
            display, line, column, "QC102",
            f"YAML 1.1 reads unquoted {text} as the boolean {meaning}",
            f"write {meaning} for a boolean, or quote it (\"{text}\") for the word",
        )
    return text


def _sexagesimal_value(text: str) -> int | float:
    sign = -1 if text.startswith("-") else 1
    total: float = 0
    for part in text.lstrip("+-").replace("_", "").split(":"):
        total = total * 60 + float(part)
    total *= sign
    return int(total) if float(total).is_integer() else total
