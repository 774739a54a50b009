"""The `qcompile` console script. The plain compile form (`qcompile RECIPE -o plan.json ...`) runs without
importing click, about a third of the start-up time; everything else goes to the click CLI in qcompiler.cli.main,
which owns help and every usage error."""

from __future__ import annotations

import sys

from qcompiler.cli import COMMAND_MODULES
from qcompiler.cli.compile_run import parse_simple_compile_args, run_compile


def main() -> None:
    options = parse_simple_compile_args(sys.argv[1:], COMMAND_MODULES)
    if options is not None:
        sys.exit(run_compile(**options))
    from qcompiler.cli.main import main as click_main

    click_main()


if __name__ == "__main__":
    main()
