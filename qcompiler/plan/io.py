"""Atomic file replacement (readers see the old file or the new one, never a half-written one), and sha256."""

from __future__ import annotations

import os
import tempfile
from hashlib import sha256

__all__ = ["sha256", "write_bytes_atomically", "write_text_atomically"]


def _default_mode(path: str) -> int:
    """The old file's permissions, or what a plain open() would give a new file (0666 minus the umask)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> None:
    """Write `data` to a temp file beside `path`, fsync it, then os.replace it over `path`.

    An interrupted write leaves no temp file behind. An OSError names `path` (not the temp file), so the
    message a user sees is about the file they asked for.
    """
    target = os.fspath(path)
    folder, name = os.path.split(target)
    try:
        mode = _default_mode(target) if mode is None else mode
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder or ".")
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
