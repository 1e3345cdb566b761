"""Domain errors raised by the core; the bot and CLI turn them into friendly messages."""

from __future__ import annotations


class CsbotError(Exception):
    """Base class for every error the core raises on purpose."""


class ConfigError(CsbotError):
    """A setting or a configuration file is invalid; the message names what and why."""


class NotFoundError(CsbotError):
    """A named thing does not exist; `suggestions` holds close matches, best first."""

    def __init__(self, kind: str, name: str, suggestions: list[str] | None = None) -> None:
        self.kind = kind
        self.name = name
        self.suggestions = suggestions or []
        hint = f" Did you mean: {', '.join(self.suggestions)}?" if self.suggestions else ""
        super().__init__(f"No {kind} called {name!r}.{hint}")


class InvalidTransition(CsbotError):
    """A stage move that the stage machine does not allow."""


class ImportFailed(CsbotError):
    """A CSV import found bad rows; nothing was written. `problems` lists them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) found; nothing was written.")
