"""benchmarks/fuzz.py keeps working: a short run through the real readers finds nothing, and the harness itself
keeps up with the plan and sensitivity formats (its own checker once read format-1 keys only, and counted its
own KeyError as 23 "crashes" in 400 mutants of format-2 plans)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_short_fuzz_run_finds_no_failure():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fuzz.py"), "--mutants", "400", "--seed", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "failures: crash 0, hang 0, silent accept 0, unlocated 0, mislocated 0" in done.stdout
    assert "plans diffed 0," not in done.stdout  # loaded hostile plans do reach `qcompile diff`
