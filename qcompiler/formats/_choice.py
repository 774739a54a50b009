"""`--dtype` choices that follow the registry (a format registered after the CLI is imported is offered too)."""

from __future__ import annotations

from typing import Any

import click

from qcompiler.formats import FORMATS


class FormatChoice(click.Choice):
    """click.Choice over the registered formats' names, read at each use."""

    def __init__(self) -> None:
        super().__init__(())

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        return tuple(FORMATS)

    @choices.setter
    def choices(self, value: Any) -> None:
        pass  # the registry is the one list
