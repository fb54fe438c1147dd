"""Diagnostics that point at the exact place in a policy file.

Every problem the front end finds is a `Diagnostic` with a `Span`; validation
collects them all and raises one `PolicyError`, so an operator sees every
mistake of a run at once.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple


class Span(NamedTuple):
    """A position in a source file, 1-based like editors and compilers print it.

    A named tuple rather than a frozen dataclass: the loader makes one for every key and
    value of a policy (over a million at 100,000 rules), and a frozen dataclass's three
    guarded attribute writes made that a quarter of the loader's time. It compares,
    orders, hashes and prints as the dataclass did."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


UNKNOWN_SPAN = Span("<policy>", 1, 1)


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, order=True, slots=True)
class Diagnostic:
    span: Span
    severity: Severity
    message: str

    def __str__(self) -> str:
        return f"{self.span}: {self.severity.value}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.span.file,
            "line": self.span.line,
            "column": self.span.column,
            "severity": self.severity.value,
            "message": self.message,
        }


class PolicyError(Exception):
    """The policy is not valid; `diagnostics` holds every problem found (errors and warnings)."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = sorted(set(diagnostics))
        errors = [d for d in self.diagnostics if d.severity is Severity.ERROR]
        super().__init__("\n".join(str(d) for d in errors) or "invalid policy")


@dataclass
class Collector:
    """Accumulates diagnostics while a pass walks the policy, instead of stopping at the first."""

    items: list[Diagnostic] = field(default_factory=list)

    def error(self, span: Span, message: str) -> None:
        self.items.append(Diagnostic(span, Severity.ERROR, message))

    def warning(self, span: Span, message: str) -> None:
        self.items.append(Diagnostic(span, Severity.WARNING, message))

    def extend(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.items.extend(diagnostics)

    @property
    def has_errors(self) -> bool:
        return any(d.severity is Severity.ERROR for d in self.items)

    def raise_if_errors(self) -> None:
        if self.has_errors:
            raise PolicyError(self.items)


def did_you_mean(name: str, candidates: Iterable[str], prefix: str = "") -> str:
    """A ' (did you mean "x"?)' suffix when a close candidate exists, else ''.

    `prefix` is written before the suggestion, as it is before the name (`@` of sets)."""
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f' (did you mean "{prefix}{close[0]}"?)' if close else ""
