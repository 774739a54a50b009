"""Atomic file replacement (readers see the old file or the new one, never a half-written one), and sha256."""

from __future__ import annotations

import itertools
import os


def _fast_sha256():
    """CPython's built-in sha256 (hashlib would load OpenSSL's, ~5 ms of start-up, for the same digest)."""
    import importlib

    for module in ("_sha256", "_sha2"):  # _sha2 from Python 3.12 on
        try:
            return importlib.import_module(module).sha256
        except ImportError:
            continue
    import hashlib

    return hashlib.sha256


sha256 = _fast_sha256()

_counter = itertools.count()


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

    The temp name is made from the pid and a counter and created with O_EXCL (no `tempfile` import: it
    costs more start-up time than compiling a recipe). An interrupted write leaves no temp file behind.
    """
    target = os.fspath(path)
    folder, name = os.path.split(target)
    mode = _default_mode(target) if mode is None else mode
    while True:
        tmp = os.path.join(folder, f".{name}.{os.getpid()}.{next(_counter)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            break
        except FileExistsError:
            continue
    try:
        try:
            os.fchmod(fd, mode)  # os.open's mode is filtered by the umask; the old file's mode is not
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
