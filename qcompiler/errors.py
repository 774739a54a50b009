"""Error types of qcompile. Every error a user can cause is one of these, printed without a traceback."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Diagnostic:
    """One finding about a recipe: where it is, how bad, what is wrong and how to fix it."""

    path: str
    line: int  # 1-based; 0 when the finding is about the whole file
    column: int  # 1-based; 0 when unknown
    severity: str  # "error" or "warning"
    code: str  # stable identifier, e.g. "QC103"; documented in docs/recipes.md
    message: str
    hint: str = ""

    def location(self) -> str:
        if self.line <= 0:
            return self.path
        return f"{self.path}:{self.line}:{self.column}"

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
        }


class QcompileError(Exception):
    """Base of every error qcompile raises on purpose (bad input, not a bug)."""


class RecipeError(QcompileError):
    """A recipe could not be compiled; `diagnostics` says where and why (errors and warnings)."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = list(diagnostics)
        first = next((d for d in self.diagnostics if d.severity == "error"), self.diagnostics[0])
        super().__init__(f"{first.location()}: {first.severity}[{first.code}] {first.message}")


class PlanError(QcompileError):
    """A plan file is unreadable, malformed, from an unknown format version, or was edited after compiling."""


class FamilyError(QcompileError):
    """A model family is unknown or its data file is malformed."""


def close_matches(word: str, candidates: list[str], n: int = 1, cutoff: float = 0.6) -> list[str]:
    """Candidates close to a misspelt `word`, for "did you mean" hints."""
    import difflib  # imported only when there is a mistake to suggest a fix for (start-up time)

    return difflib.get_close_matches(word, candidates, n=n, cutoff=cutoff)
