"""Promises the repository makes to newcomers and CI: README commands, CI script, pre-commit hooks."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO_ROOT


def _readme_test_command() -> str:
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    marker = lines.index("<!-- test-command -->")
    assert lines[marker + 1] == "```"
    return lines[marker + 2]


def test_ci_runs_exactly_the_readme_test_command():
    command = _readme_test_command()
    extracted = subprocess.run(
        ["awk", '/<!-- test-command -->/ {getline; getline; print; exit}', "README.md"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert extracted == command
    assert 'bash -c "$test_command"' in (REPO_ROOT / ".ci/run").read_text()
    assert "torch==2.13.0" in command and command.index("torch==2.13.0") < command.index(".[runtime,dev]")


def test_readme_starts_with_the_main_job_then_the_tests():
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("\n", 1)[1].strip() for b in text.split("```")[1::2]][:2]
    main_job, tests = blocks
    assert "qcompile recipes/wan22_i2v.yaml --variant tiny -o plan.json" in main_job
    assert "python -m runtime.demo plan.json" in main_job
    assert tests == _readme_test_command()


def test_pre_commit_hooks_run_real_commands():
    hooks = yaml.safe_load((REPO_ROOT / ".pre-commit-hooks.yaml").read_text())
    assert {hook["id"] for hook in hooks} == {"qcompile-lint", "qcompile-check"}
    for hook in hooks:
        program, subcommand = shlex.split(hook["entry"])[:2]
        assert program == "qcompile" and subcommand in ("lint", "check")
        assert hook["language"] == "python"


def test_every_package_is_installed():
    import tomllib

    listed = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(REPO_ROOT).parts)
        for top in ("qcompiler", "runtime")
        for init in (REPO_ROOT / top).rglob("__init__.py")
    }
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"


@pytest.mark.slow  # two pytest processes
def test_plain_pytest_leaves_slow_tests_out_and_the_ci_command_runs_them(tmp_path):
    (tmp_path / "test_probe.py").write_text(
        "import pytest\n\n\ndef test_fast():\n    pass\n\n\n@pytest.mark.slow\ndef test_heavy():\n    pass\n")
    pytest_args = shlex.split(_readme_test_command().split("&&")[-1])
    assert pytest_args[0] == "OMP_NUM_THREADS=1"  # one torch thread: two ran 10-20x slower on a busy 2-core machine
    pytest_args = pytest_args[1:]
    assert pytest_args[:3] == [".venv/bin/python", "-m", "pytest"]

    def collected(*args: str) -> list[str]:
        done = subprocess.run([sys.executable, "-m", "pytest", "-c", str(REPO_ROOT / "pyproject.toml"),
                               "--rootdir", str(tmp_path), "--collect-only", "-q", *args, str(tmp_path)],
                              cwd=tmp_path, capture_output=True, text=True)
        return sorted(line.split("::")[-1] for line in done.stdout.splitlines() if "::" in line)

    assert collected() == ["test_fast"]
    ci_selection = [a for a in pytest_args[3:] if a != "-q"]  # a second -q would hide the test ids
    assert collected(*ci_selection) == ["test_fast", "test_heavy"]
