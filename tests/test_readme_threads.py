"""The README's quick start says how to set torch's threads (issue 18, new-user item 15)."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_quick_start_says_to_set_omp_num_threads_next_to_the_first_command() -> None:
    text = README.read_text(encoding="utf-8")
    first_command = text.index("python -m runtime.demo plan.json")
    next_heading = text.index("Set up and run the tests")
    passage = text[first_command:next_heading]
    assert "OMP_NUM_THREADS=1" in passage and "slower" in passage
