"""Interrupting `qcompile patch` for real, and checking what it leaves: shared by tests/export/test_patch_interrupted.py
and benchmarks/patch_interrupt.py.

Two ways to interrupt a real `qcompile patch` subprocess:
- at an exact file operation: the child (`python patch_interrupts.py SIGNAL N PIPELINE_DIR ARGS...`) counts, with a
  Python audit hook, the operations that change something in the pipeline folder (creating, chmod-ing, renaming or
  deleting a file) and sends itself SIGNAL just before the N-th; it exits 3 if the command ends before that;
- at a random time: `random_interrupt_loop` sends a signal after a seeded random delay, either from the start or
  from the moment the first file of ours appears in the folder.
"Loadable" is checked the way runtime.load reads an embedded plan (runtime/loading.py:_embedded_plan): each
transformer's config.json as diffusers parses it, through embedded_plan_from_configs, then load_plan.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = ("transformer", "transformer_2")
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def loaded_state(folder: Path, plan_sha256: str) -> str:
    """"stock" or "patched" as runtime.load(pipe) would see the folder; AssertionError when it would fail."""
    from qcompiler.plan.format import load_plan
    from qcompiler.targets.pipeline_dir import embedded_plan_from_configs

    configs = {name: json.loads((folder / name / "config.json").read_text()) for name in COMPONENTS}
    try:
        data = embedded_plan_from_configs(configs)
        if data is None:
            return "stock"
        assert load_plan(data).content_hash == plan_sha256, "a different plan is embedded"
    except Exception as exc:  # noqa: BLE001 - any error here is the finding
        raise AssertionError(f"runtime.load would fail on {folder}: {exc}") from None
    return "patched"


def command(args: list[str], *, interrupt: tuple[int, int] | None = None) -> list[str]:
    """The argv that runs `qcompile ARGS`, interrupted by (signal, n) at the n-th file operation if given."""
    if interrupt is None:
        return [sys.executable, "-m", "qcompiler.cli.main", *args]
    signum, n = interrupt
    return [sys.executable, __file__, str(signum), str(n), *args]


def run(args: list[str], *, interrupt: tuple[int, int] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command(args, interrupt=interrupt), capture_output=True, text=True, env=env, timeout=120)


def leftovers(folder: Path) -> list[str]:
    """Files of ours that a finished command must not leave: journal, temp files, probes."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if p.is_file())


def restore(folder: Path, files: dict[str, bytes]) -> None:
    """Make `folder` hold exactly `files` (a snapshot) again."""
    for path in [p for p in folder.rglob("*") if p.is_file()]:
        if str(path.relative_to(folder)) not in files:
            path.unlink()
    for name, data in files.items():
        if not (folder / name).is_file() or (folder / name).read_bytes() != data:
            (folder / name).write_bytes(data)


def random_interrupt_loop(folder: Path, plan_path: Path, count: int, seed: int,
                          log=None) -> Counter:
    """`count` interrupted runs of `qcompile patch` / `--remove` on `folder` (stock at the start), each followed by
    a check that the folder loads (stock or fully patched) and by a repairing run that must succeed and leave the
    folder byte for byte as before or as fully patched. Returns counts; "failure: ..." keys are findings, and
    `log` (a callable taking one line) gets each failing iteration's details. After a failed repair the folder
    is put back to stock, so one finding is counted once, not again by the iterations after it."""
    from qcompiler.plan.format import load_plan

    rng = random.Random(seed)
    plan_sha = load_plan(plan_path).content_hash
    assert loaded_state(folder, plan_sha) == "stock"
    stock = snapshot(folder)
    finished = run(["patch", str(folder), str(plan_path)])
    assert finished.returncode == 0, finished.stderr
    patched = snapshot(folder)
    finished = run(["patch", str(folder), "--remove"])
    assert finished.returncode == 0 and snapshot(folder) == stock, finished.stderr
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    counts: Counter = Counter()
    state = "stock"
    window = 0.05  # seconds after our first file appears; refined from the runs that finish
    for i in range(count):
        operation = ["patch", str(folder), str(plan_path)] if state == "stock" else ["patch", str(folder), "--remove"]
        before = snapshot(folder)
        signum = rng.choice(SIGNALS)
        targeted = rng.random() < 0.8
        delay = rng.uniform(0, window if targeted else 0.6)
        started = time.perf_counter()
        child = subprocess.Popen(command(operation), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if targeted:  # wait for the first file of ours (probe, journal temp file) to appear in the folder
            while child.poll() is None and not any(name.startswith((".qcompile", "..qcompile")) for name in os.listdir(folder)):
                pass
            seen = time.perf_counter()
        time.sleep(delay)
        if child.poll() is None:
            child.send_signal(signum)
        _, stderr = child.communicate(timeout=120)
        if targeted and child.returncode == 0:
            window = max(0.002, min(0.5, 0.5 * window + 0.5 * (time.perf_counter() - seen)))
        name = signal.Signals(signum).name
        after = snapshot(folder)
        kind = ("finished" if child.returncode == 0 else
                "rolled back by the command" if child.returncode == 128 + signum else
                f"killed ({name})" if child.returncode == -signum else f"exit {child.returncode}")
        found: list[str] = []  # the failures of this iteration
        try:
            now = loaded_state(folder, plan_sha)
        except AssertionError as exc:
            found.append("failure: not loadable")
            now = f"broken ({exc})"
        if kind == "rolled back by the command":
            if "after the change" in stderr:
                kind = "interrupted after completing"
                if after == before or after not in (stock, patched):
                    found.append("failure: said complete but is not")
            elif after != before:
                found.append("failure: said nothing changed but the folder changed")
        if kind == "exit 1" and signum == signal.SIGINT and after == before:
            # Python's own answer to Ctrl-C before our handler is set: while click runs, it prints Aborted!;
            # earlier (interpreter start-up, imports: slow on a loaded machine) a KeyboardInterrupt traceback
            # (`python -m` exits 1 on it, not by SIGINT).
            if "Aborted!" in stderr:
                kind = "SIGINT before the command started (click: Aborted!)"
            elif stderr.rstrip().endswith("KeyboardInterrupt"):
                kind = "SIGINT while Python was starting (KeyboardInterrupt)"
        if kind.startswith("exit") or (kind == "finished" and stderr.strip()):
            found.append(f"failure: {kind}: {stderr.strip()[-200:]}")
        changed = "unchanged" if after == before else "complete" if after in (stock, patched) else "partial"
        counts[f"{kind}, folder {changed}, loads {now if not now.startswith('broken') else 'broken'}"] += 1
        # Repair: the next command (either one) finishes or undoes what was left, and succeeds.
        repair = ["patch", str(folder), str(plan_path)] if rng.random() < 0.5 else ["patch", str(folder), "--remove"]
        fixed = run(repair)
        final = snapshot(folder)
        nothing_to_remove = fixed.returncode == 1 and "nothing to remove" in fixed.stderr and final == stock
        if (fixed.returncode != 0 and not nothing_to_remove) or final not in (stock, patched) or leftovers(folder):
            found.append("failure: repair")
        if found:
            counts.update(found)
            _log(log, f"#{i} (seed {seed}) {_label(operation)} on a {state} folder, {name} "
                      f"{delay:.4f}s after {'our first file appeared' if targeted else 'the start'}: {kind}, "
                      f"exit {child.returncode}, stderr {stderr.strip()[-300:]!r}, folder after: "
                      f"{_compare(after, before, stock, patched)}, loads {now}; then {_label(repair)}: exit "
                      f"{fixed.returncode}, stderr {fixed.stderr.strip()[-300:]!r}, folder after: "
                      f"{_compare(final, before, stock, patched)}; findings: {found}")
        if "failure: repair" in found:
            restore(folder, stock)
        state = "stock" if snapshot(folder) == stock else "patched"
        counts["_seconds"] += round(time.perf_counter() - started, 3)
    return counts


def _label(args: list[str]) -> str:
    return "patch --remove" if "--remove" in args else "patch PLAN"


def _compare(files: dict[str, bytes], before: dict[str, bytes], stock: dict[str, bytes],
             patched: dict[str, bytes]) -> str:
    """How a snapshot differs from the nearest of the known states: which files are extra, missing or changed."""
    if files == before:
        return "unchanged"
    for label, known in (("stock", stock), ("patched", patched)):
        if files == known:
            return label
    label, known = min((("stock", stock), ("patched", patched)),
                       key=lambda lk: len(set(files) ^ set(lk[1])) + sum(files.get(k) != v for k, v in lk[1].items()))
    extra = sorted(set(files) - set(known))
    missing = sorted(set(known) - set(files))
    changed = sorted(k for k in set(files) & set(known) if files[k] != known[k])
    return f"neither stock nor patched; vs {label}: extra {extra}, missing {missing}, changed {changed}"


def _log(log, line: str) -> None:
    if log is not None:
        log(line)


def _child(argv: list[str]) -> None:
    signum, stop_at, args = int(argv[0]), int(argv[1]), argv[2:]
    folder = os.path.abspath(args[1])
    seen = 0

    def inside(path: object) -> bool:
        return isinstance(path, str) and os.path.abspath(path).startswith(folder + os.sep)

    def hook(event: str, hook_args: tuple) -> None:
        nonlocal seen
        writes = event == "open" and inside(hook_args[0]) and isinstance(hook_args[2], int) and (
            hook_args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        if writes or (event in ("os.rename", "os.remove") and inside(hook_args[0])) or (
                event == "os.chmod" and isinstance(hook_args[0], int) and seen):
            seen += 1
            if seen == stop_at:
                os.kill(os.getpid(), signum)

    from qcompiler.cli.main import cli

    sys.addaudithook(hook)
    try:
        cli.main(args, prog_name="qcompile", standalone_mode=True)
    except SystemExit as exc:
        if exc.code not in (0, None) or seen >= stop_at:
            raise
    sys.exit(3)  # finished before the stop_at-th operation


if __name__ == "__main__":
    _child(sys.argv[1:])
