"""Atomic file replacement (readers see the old file or the new one, never a half-written one), and sha256."""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from hashlib import sha256
from typing import Any

__all__ = ["InputRefused", "parse_json", "read_json_file", "read_regular_file", "remove_stale_temp_files", "sha256",
           "write_bytes_atomically", "write_text_atomically"]


def _default_mode(path: str) -> int:
    """The old file's permissions, or what a plain open() would give a new file (0666 minus the umask)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


# Temp files of an atomic write are `.NAME.qcompile-tmp-PID.RANDOM.tmp` beside the target: a write killed
# before its rename (SIGKILL, power loss) leaves one, and the next write to the same target removes those whose
# process is gone. Only names of this form are touched, so other programs' temp files are never removed.
TEMP_MARKER = "qcompile-tmp"
_TEMP_NAME = re.compile(rf"^\.(?P<name>.+)\.{TEMP_MARKER}-(?P<pid>[0-9]{{1,10}})\.[A-Za-z0-9_]+\.tmp\Z", re.S)


def _temp_prefix(name: str, pid: int) -> str:
    return f".{name}.{TEMP_MARKER}-{pid}."


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid we wrote; leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists but is another user's (or cannot be asked): not ours to judge
    return True


def remove_stale_temp_files(path: str | os.PathLike[str]) -> list[str]:
    """Remove the temp files that killed atomic writes to `path` left (see TEMP_MARKER); returns their paths.
    A temp file whose writer is still running (the pid is alive) is kept; failures to list or remove are ignored
    (cleaning up is a courtesy, never a reason for a write to fail)."""
    target = os.fspath(path)
    folder, name = os.path.split(target)
    prefix = f".{name}.{TEMP_MARKER}-"
    removed = []
    try:
        entries = [entry for entry in os.listdir(folder or ".") if entry.startswith(prefix)]
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry)
        if not match or match.group("name") != name or _process_alive(int(match.group("pid"))):
            continue
        stale = os.path.join(folder, entry)
        try:
            if os.path.isfile(stale) and not os.path.islink(stale):
                os.unlink(stale)
                removed.append(stale)
        except OSError:
            pass
    return removed


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> None:
    """Write `data` to a temp file beside `path`, fsync it, then os.replace it over `path`.

    An interrupted write leaves no temp file behind; a killed one leaves one that the next write to `path`
    removes (remove_stale_temp_files). An OSError names `path` (not the temp file), so the
    message a user sees is about the file they asked for.
    """
    target = os.fspath(path)
    folder, name = os.path.split(target)
    remove_stale_temp_files(target)
    try:
        mode = _default_mode(target) if mode is None else mode
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(name, os.getpid()), suffix=".tmp", dir=folder or ".")
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, target) from exc
    try:
        try:
            os.fchmod(fd, mode)  # mkstemp creates 0600; keep the old file's mode or the umask's default
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.filename != target:
            raise OSError(exc.errno, exc.strerror, target) from exc
        raise


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomically(path, text.encode("utf-8"))


# -- reading untrusted JSON files -------------------------------------------------------------------------

# Plans, families and sensitivity files nest 6 levels deep at most; 64 leaves room and keeps every reader
# (json, jsonschema, our own walks) far from Python's recursion limit.
MAX_JSON_DEPTH = 64
# No count in these files comes near 20 digits; refusing longer integers keeps int() away from huge strings
# (Python refuses above 4,300 digits with a ValueError, and is quadratic below that).
MAX_INTEGER_DIGITS = 20

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")
_LONG_INTEGER = re.compile(rf"(?<![\d.eE+-])-?\d{{{MAX_INTEGER_DIGITS + 1},}}")


class InputRefused(Exception):
    """A file that is refused before or while reading it; `line`/`column` are 1-based, 0 when not about a line."""

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        super().__init__(message)
        self.message, self.line, self.column = message, line, column

    def located(self, path: str) -> str:
        return f"{path}:{self.line}:{self.column}: {self.message}" if self.line else f"{path}: {self.message}"


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_regular_file(path: str | os.PathLike[str], *, max_bytes: int) -> bytes:
    """The bytes of `path`, refusing (InputRefused) anything but a regular file of at most `max_bytes`.

    The file type is checked with stat() before it is opened, so a FIFO or a device is never opened for reading
    (opening a FIFO blocks until a writer appears). FileNotFoundError and other OSErrors propagate.
    """
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise InputRefused(f"is {_file_kind(info.st_mode)}; expected a regular file")
    if info.st_size > max_bytes:
        raise InputRefused(f"file is {info.st_size} bytes; at most {max_bytes} are read")
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputRefused(f"file is more than {max_bytes} bytes")
    return data


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _json_depth_violation(text: str) -> int | None:
    """Offset of the first bracket nested deeper than MAX_JSON_DEPTH, or None (strings are skipped)."""
    depth = 0
    position = 0
    for match in _STRING.finditer(text):
        for bracket in _BRACKET.finditer(text, position, match.start()):
            depth += 1 if bracket.group() in "[{" else -1
            if depth > MAX_JSON_DEPTH:
                return bracket.start()
        position = match.end()
    for bracket in _BRACKET.finditer(text, position):
        depth += 1 if bracket.group() in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            return bracket.start()
    return None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str) -> Any:
    """json.loads for untrusted text: refuses (InputRefused, with line and column) nesting deeper than
    MAX_JSON_DEPTH, integers longer than MAX_INTEGER_DIGITS digits, NaN/Infinity and invalid JSON."""
    too_deep = _json_depth_violation(text)
    if too_deep is not None:
        raise InputRefused(f"nested more than {MAX_JSON_DEPTH} levels deep", *_position(text, too_deep))
    long_integer = _LONG_INTEGER.search(_STRING.sub(lambda m: " " * len(m.group()), text))
    if long_integer:
        raise InputRefused(f"number with {len(long_integer.group().lstrip('-'))} digits; no field takes more than "
                           f"{MAX_INTEGER_DIGITS}", *_position(text, long_integer.start()))
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise InputRefused(f"not valid JSON: {exc.msg}", exc.lineno, exc.colno) from None
    except ValueError as exc:  # NaN / Infinity
        raise InputRefused(f"not valid JSON: {exc}") from None


def read_json_file(path: str | os.PathLike[str], *, max_bytes: int) -> Any:
    """read_regular_file + UTF-8 + parse_json; raises InputRefused (or an OSError such as FileNotFoundError)."""
    raw = read_regular_file(path, max_bytes=max_bytes)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputRefused(f"byte 0x{raw[exc.start]:02x} is not valid UTF-8", *_position(raw[: exc.start].decode("utf-8", "replace"), exc.start)) from None
    return parse_json(text)
