"""`qcompile patch PIPELINE_DIR PLAN [--remove]`: embed a plan in (or take it out of) a saved diffusers pipeline."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from qcompiler.targets.pipeline_dir import BACKUP_SUFFIX, CONFIG_NAME, PLAN_KEY, patch_pipeline_dir, remove_patch

_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class _Interrupted(BaseException):
    """A stop signal, raised where the main thread is, so the library puts every file back before exiting."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _signals_roll_back() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise _Interrupted; later ones are ignored while the rollback runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        for each in _STOP_SIGNALS:
            signal.signal(each, signal.SIG_IGN)
        raise _Interrupted(signum)

    previous = {each: signal.signal(each, stop) for each in _STOP_SIGNALS}
    try:
        yield
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)


@click.command(name="patch")
@click.argument("pipeline_dir", metavar="PIPELINE_DIR", type=click.Path(file_okay=False))
@click.argument("plan_path", metavar="PLAN", required=False)
@click.option("--remove", is_flag=True, help="Take the embedded plan out again (restores the original config.json).")
def command(pipeline_dir: str, plan_path: str | None, remove: bool) -> None:
    """Write PLAN into each transformer's config.json of the pipeline saved in PIPELINE_DIR.

    \b
    The plan goes under the private key _qcompile_plan; runtime.load(pipe) with no plan then uses it.
    The original config.json is kept as config.json.qcompile-backup; --remove restores it byte for byte.
    All or nothing: an interrupted run (even killed) leaves the folder as it was or fully changed, and the
    next run finishes or undoes what it left.
    """
    if remove == (plan_path is not None):
        raise click.UsageError("give PLAN to patch, or --remove without PLAN to undo a patch")
    before = _configs(pipeline_dir)
    try:
        with _signals_roll_back():
            if remove:
                _remove(pipeline_dir)
            else:
                _patch(pipeline_dir, plan_path)
    except (_Interrupted, KeyboardInterrupt) as stopped:
        # KeyboardInterrupt: Ctrl-C in the instant our handlers are put back, which click would answer with
        # "Aborted!" whatever the folder holds. Inside its transaction the library says whether it undid the
        # change; an interrupt outside it (before it started, or after it finished, before this frame knew) is
        # told by the folder itself.
        undone = getattr(stopped, "qcompile_undone", None)
        if undone is None:
            undone = _configs(pipeline_dir) == before
        _interrupted(pipeline_dir, getattr(stopped, "signum", signal.SIGINT), undone=undone)


def _configs(pipeline_dir: str) -> dict[str, bytes]:
    """Every component's config.json, as bytes: what a patch or its removal changes."""
    folder = Path(pipeline_dir)
    try:
        return {str(path): path.read_bytes() for path in sorted(folder.glob(f"*/{CONFIG_NAME}"))}
    except OSError:
        return {}


def _interrupted(pipeline_dir: str, signum: int, *, undone: bool) -> None:
    name = signal.Signals(signum).name
    if undone:
        click.echo(f"error: interrupted by {name}; nothing was changed in {pipeline_dir} (an unfinished change "
                   "is undone): run the command again", err=True)
    else:
        click.echo(f"error: interrupted by {name} after the change to {pipeline_dir} was complete", err=True)
    sys.exit(128 + signum)


def _remove(pipeline_dir: str) -> None:
    removed = remove_patch(pipeline_dir)
    if removed.recovered:
        click.echo(f"{removed.recovered}")
    for name in removed.restored:
        click.echo(f"{name}/{CONFIG_NAME}: restored the original from its backup")
    for name in removed.key_removed:
        click.echo(f"{name}/{CONFIG_NAME}: changed since patching (or re-saved); removed only {PLAN_KEY}")
    for name in removed.stale_backups:
        click.echo(f"{name}/{CONFIG_NAME}{BACKUP_SUFFIX}: deleted, a leftover identical to {CONFIG_NAME}")


def _patch(pipeline_dir: str, plan_path: str | None) -> None:
    result = patch_pipeline_dir(pipeline_dir, plan_path)
    if result.recovered:
        click.echo(f"{result.recovered}")
    for name in result.patched:
        click.echo(f"{name}/{CONFIG_NAME}: embedded plan {result.plan_sha256[:12]} "
                   f"(original kept as {CONFIG_NAME}{BACKUP_SUFFIX})")
    for name in result.already:
        click.echo(f"{name}/{CONFIG_NAME}: already carries plan {result.plan_sha256[:12]}; unchanged")
    click.echo(f"runtime.load(pipe) with no plan now uses it; undo with: qcompile patch {pipeline_dir} --remove")
