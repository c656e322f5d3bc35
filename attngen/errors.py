"""Errors a user can cause with a spec, reported at a line and column of its source."""

from __future__ import annotations


class SpecError(ValueError):
    """An invalid spec. ``.line`` and ``.column`` are 1-based; ``.errors`` lists every error found.

    ``str(err)`` is the compiler-style report: ``path:line:col: error: message``, the source line
    and a caret under the offending column, once per error.
    """

    def __init__(self, message: str, line: int, column: int, *, source: str | None = None,
                 path: str | None = None):
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.source = source
        self.path = path
        self.errors: list[SpecError] = [self]

    @classmethod
    def group(cls, errors: list[SpecError]) -> SpecError:
        """One exception carrying several errors; it reports as the first and prints them all."""
        first = errors[0]
        first.errors = list(errors)
        return first

    def attach(self, source: str, path: str | None) -> SpecError:
        for err in self.errors:
            err.source = source if err.source is None else err.source
            err.path = path if err.path is None else err.path
        return self

    def render_one(self) -> str:
        where = f"{self.path or '<spec>'}:{self.line}:{self.column}"
        text = f"{where}: error: {self.message}"
        if self.source is not None:
            lines = self.source.splitlines()
            if 1 <= self.line <= len(lines):
                src = lines[self.line - 1].expandtabs(1)
                text += f"\n    {src}\n    {' ' * (self.column - 1)}^"
        return text

    def __str__(self) -> str:
        return "\n".join(err.render_one() for err in self.errors)
