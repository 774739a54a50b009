"""`qcompile patch` and `--remove` interrupted for real (SIGKILL, SIGTERM, SIGINT) at every file operation and at
random times: the folder always loads as before or fully patched, and the next command repairs it.

The long loop (several hundred kills) is benchmarks/patch_interrupt.py.
"""

from __future__ import annotations

import signal

import pytest

from qcompiler.plan.format import load_plan

from .patch_interrupts import SIGNALS, leftovers, loaded_state, random_interrupt_loop, restore, run, snapshot

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("operation", ["patch", "remove"])
def test_interrupted_at_every_file_operation_loads_and_repairs(config_only_pipeline_dir, tiny_plan_path, operation):
    folder = config_only_pipeline_dir
    plan_sha = load_plan(tiny_plan_path).content_hash
    stock = snapshot(folder)
    assert run(["patch", str(folder), str(tiny_plan_path)]).returncode == 0
    patched = snapshot(folder)
    args = ["patch", str(folder), str(tiny_plan_path)] if operation == "patch" else ["patch", str(folder), "--remove"]
    start, goal = (stock, patched) if operation == "patch" else (patched, stock)
    stops = 0
    for n in range(1, 200):
        restore(folder, start)
        signum = SIGNALS[n % len(SIGNALS)]
        child = run(args, interrupt=(signum, n))
        if child.returncode == 3:  # the command has fewer file operations than n
            break
        stops += 1
        where = f"{signal.Signals(signum).name} before file operation {n}"
        loaded_state(folder, plan_sha)  # raises when runtime.load would fail
        if signum != signal.SIGKILL:
            # The command itself puts every file back, says so, and exits 128 + signal.
            assert child.returncode == 128 + signum, (where, child.stderr)
            assert "interrupted by" in child.stderr and "Traceback" not in child.stderr, where
            assert snapshot(folder) == start, where
        else:
            assert child.returncode == -signal.SIGKILL, (where, child.stderr)
        # The next run of the same command finishes the job, whatever was left.
        again = run(args)
        assert again.returncode == 0, (where, again.stderr)
        assert snapshot(folder) == goal and not leftovers(folder), where
    assert stops >= 15, f"only {stops} file operations seen: the interrupting child no longer sees them"


@pytest.mark.parametrize("operation", ["patch", "remove"])
def test_killed_inside_an_atomic_write_then_the_other_command_leaves_nothing_of_ours(
        config_only_pipeline_dir, tiny_plan_path, operation):
    """A SIGKILL between an atomic write's temp file and its rename leaves `.NAME.qcompile-tmp-PID.*.tmp`; the
    next command must delete it even when it writes nothing itself (a --remove with nothing to remove, a patch
    of a folder the recovery left patched), or the folder keeps a file of ours forever."""
    folder = config_only_pipeline_dir
    patch, remove = ["patch", str(folder), str(tiny_plan_path)], ["patch", str(folder), "--remove"]
    stock = snapshot(folder)
    assert run(patch).returncode == 0
    patched = snapshot(folder)
    args, other, start = (patch, remove, stock) if operation == "patch" else (remove, patch, patched)
    temp_files_left = 0
    for n in range(1, 200):
        restore(folder, start)
        child = run(args, interrupt=(signal.SIGKILL, n))
        if child.returncode == 3:
            break
        temp_files_left += any(".qcompile-tmp-" in name for name in leftovers(folder))
        again = run(other)
        where = f"{operation} killed before file operation {n}, then the other command"
        nothing_to_remove = again.returncode == 1 and "nothing to remove" in again.stderr
        assert again.returncode == 0 or nothing_to_remove, (where, again.stderr)
        assert snapshot(folder) in (stock, patched) and not leftovers(folder), (where, leftovers(folder))
    assert temp_files_left >= 2, "no kill landed inside an atomic write: the test no longer tests anything"


def test_a_kill_between_the_two_configs_loads_as_before_in_diffusers(pipeline_dir, tiny_plan_path):
    """The real diffusers from_pretrained + runtime.load on a folder a SIGKILL left half written."""
    import runtime
    from runtime.errors import PlanMismatchError

    tiny = pytest.importorskip("runtime.tiny")
    plan_sha = load_plan(tiny_plan_path).content_hash
    for n in range(1, 200):
        child = run(["patch", str(pipeline_dir), str(tiny_plan_path)], interrupt=(signal.SIGKILL, n))
        assert child.returncode in (-signal.SIGKILL, 3), child.stderr
        if (pipeline_dir / ".qcompile-patch-journal.json").exists() and b"_qcompile_plan" in (
                pipeline_dir / "transformer_2" / "config.json").read_bytes():
            break
        assert run(["patch", str(pipeline_dir), "--remove"]).returncode in (0, 1)
    else:
        pytest.fail("no kill left transformer_2 patched and transformer not")
    assert loaded_state(pipeline_dir, plan_sha) == "stock"
    pipe = tiny.load_tiny_pipeline(pipeline_dir)
    with pytest.raises(PlanMismatchError, match="no plan given"):  # exactly what an unpatched folder gives
        runtime.load(pipe, backend="reference")
    runtime.load(pipe, tiny_plan_path, backend="reference").unload()
    assert run(["patch", str(pipeline_dir), str(tiny_plan_path)]).returncode == 0
    runtime.load(tiny.load_tiny_pipeline(pipeline_dir), backend="reference").unload()  # the embedded plan


def test_twenty_random_interrupts_leave_no_unloadable_folder(config_only_pipeline_dir, tiny_plan_path):
    details: list[str] = []
    counts = random_interrupt_loop(config_only_pipeline_dir, tiny_plan_path, count=20, seed=18, log=details.append)
    failures = {k: v for k, v in counts.items() if k.startswith("failure")}
    assert not failures, "\n".join([str(failures), *details])
