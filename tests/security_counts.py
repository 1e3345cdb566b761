"""A pytest plugin that makes the security and reliability tests show their numbers in every run.

Tests take the `security_count` fixture and call it with what they proved and how many cases proved it, e.g.
`security_count("forged Slack requests refused", 120)`; the totals per label are printed in pytest's terminal
summary (section "security counts"), so a run says "forged Slack requests refused: 120" rather than just "passed".
Loaded from tests/conftest.py through `pytest_plugins`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

_COUNTS = pytest.StashKey[Counter[str]]()

SecurityCount = Callable[[str, int], None]


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_COUNTS] = Counter()


@pytest.fixture
def security_count(request: pytest.FixtureRequest) -> SecurityCount:
    """`security_count(label, n)` adds `n` cases to `label`'s total for the end-of-run summary."""
    counts = request.config.stash[_COUNTS]

    def add(label: str, n: int) -> None:
        if n < 0:
            raise ValueError(f"a count cannot be negative: {label} {n}")
        counts[label] += n

    return add


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    counts = config.stash.get(_COUNTS, Counter())
    if not counts:
        return
    terminalreporter.section("security counts")
    width = max(len(label) for label in counts)
    for label in sorted(counts):
        terminalreporter.write_line(f"{label + ':':<{width + 1}} {counts[label]:,}")
