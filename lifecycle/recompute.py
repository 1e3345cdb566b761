"""The whole-portfolio recompute: signals → health scores and snapshots → automatic stage rules.

Health is scored with each account's current stage weights; the stage rules then see today's grade. A stage change
made here therefore shows in the health weights from the next recompute on. Running it twice on one day gives the
same snapshots and moves nothing the second time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date, timedelta

from sqlmodel import Session

from lifecycle.health import Scorecard, recompute_health
from lifecycle.signals import build_signals
from lifecycle.stages import StageMachine, apply_automatic_rules


@dataclass
class RecomputeSummary:
    as_of: date
    accounts: int
    grades: dict[str, int] = field(default_factory=dict)
    stage_moves: int = 0
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


def recompute(session: Session, *, as_of: date, scorecard: Scorecard, machine: StageMachine) -> RecomputeSummary:
    """Recompute health and stages for every account as of `as_of` (the caller commits)."""
    timings: dict[str, float] = {}
    started = last = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        timings[name] = round(now - last, 3)
        last = now

    frame = build_signals(
        session, as_of, activation_ratio=machine.activation.ratio, activation_window=machine.activation.window_days
    )
    lap("signals")
    run = recompute_health(session, as_of, scorecard, signals=frame)
    lap("health")
    moves = apply_automatic_rules(session, run.signals, as_of, machine)
    lap("stages")
    scored = run.scored
    grades = scored["grade"].value_counts().to_dict()
    return RecomputeSummary(
        as_of=as_of,
        accounts=len(frame),
        grades={str(k): int(v) for k, v in grades.items()},
        stage_moves=moves,
        seconds=round(time.perf_counter() - started, 3),
        timings=timings,
    )


def backfill_health(
    session: Session, *, today: date, offsets: tuple[int, ...], scorecard: Scorecard, machine: StageMachine
) -> int:
    """Score past days (today − each offset) so that trends have something to compare with.

    Signals only read data up to each day, so a backfilled snapshot is what a nightly run would have stored then.
    Stages are not replayed (their history is kept as it is). Returns the number of snapshots written.
    """
    written = 0
    for offset in sorted(offsets, reverse=True):
        day = today - timedelta(days=offset)
        frame = build_signals(
            session, day, activation_ratio=machine.activation.ratio, activation_window=machine.activation.window_days
        )
        written += recompute_health(session, day, scorecard, signals=frame).snapshots
    return written
