"""The whole-portfolio recompute: signals → health scores and snapshots → automatic stage rules → insight.

Health is scored with each account's current stage weights; the stage rules then see today's grade. A stage change
made here therefore shows in the health weights from the next recompute on. Running it twice on one day gives the
same snapshots and moves nothing the second time.

The first recompute of an account (one never scored, e.g. just imported with its history, or whose usage arrived
after a recompute that could not score it) first backfills its daily health for the `BACKFILL_DAYS` days before,
from its first usage day on, so that "down 14 in 7 days", the at-risk list's "falling" and the health-drop alert
are known on day one instead of a month later.

Insight comes last: the churn model is trained when there is none (or it is older than `retrain_days`), every active
account is scored with its probability and reasons, cohorts and tiers are refreshed, and what the account card
shows is stored for the day (`lifecycle.cardfacts`). It runs inside a savepoint:
a failure there is reported in the summary and rolls back only the insight, never the health and stage results.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date, timedelta

import pandas as pd
from sqlalchemy import Date, bindparam, text
from sqlmodel import Session

from lifecycle.churn import InsightConfig, default_insight_config
from lifecycle.health import Scorecard, recompute_health
from lifecycle.signals import build_signals, refresh_stages
from lifecycle.stages import StageMachine, apply_automatic_rules

# The longest trend window: "down N points in 30 days" needs a snapshot 30 days back.
BACKFILL_DAYS = 30


@dataclass
class RecomputeSummary:
    as_of: date
    accounts: int
    grades: dict[str, int] = field(default_factory=dict)
    stage_moves: int = 0
    backfilled: int = 0  # snapshots of past days written for accounts scored for the first time
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    insight: str = ""  # what the churn, cohort and tier step did (or why it failed)
    # The signals frame after the run (health filled in, stages as the rules left them): the alert rules take it
    # instead of reading the usage a second time (`run_alert_rules(..., frame=summary.signals)`).
    signals: pd.DataFrame | None = field(default=None, repr=False, compare=False)


log = logging.getLogger("csbot.recompute")


def recompute(
    session: Session,
    *,
    as_of: date,
    scorecard: Scorecard,
    machine: StageMachine,
    insight: InsightConfig | None = None,
    with_insight: bool = True,
    backfill: bool = True,
) -> RecomputeSummary:
    """Recompute health and stages for every account as of `as_of`, then the insight (the caller commits).

    With `backfill`, accounts never scored before get their daily health of the days before first (see the module
    docstring)."""
    timings: dict[str, float] = {}
    started = last = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        timings[name] = round(now - last, 3)
        last = now

    backfilled = 0
    if backfill:
        backfilled = backfill_new_accounts(session, as_of=as_of, scorecard=scorecard, machine=machine)
        if backfilled:
            lap("backfill")
    frame = build_signals(
        session, as_of, activation_ratio=machine.activation.ratio, activation_window=machine.activation.window_days
    )
    lap("signals")
    run = recompute_health(session, as_of, scorecard, signals=frame)
    lap("health")
    moves = apply_automatic_rules(session, run.signals, as_of, machine)
    if moves:
        refresh_stages(session, run.signals)
    lap("stages")
    note = ""
    if with_insight:
        note = _insight(session, as_of, run.signals, scorecard, machine, insight or default_insight_config())
        lap("insight")
    scored = run.scored
    grades = scored["grade"].value_counts().to_dict()
    return RecomputeSummary(
        as_of=as_of,
        accounts=len(frame),
        grades={str(k): int(v) for k, v in grades.items()},
        stage_moves=moves,
        backfilled=backfilled,
        seconds=round(time.perf_counter() - started, 3),
        timings=timings,
        insight=note,
        signals=run.signals,
    )


def _insight(
    session: Session, as_of: date, signals: object, scorecard: Scorecard, machine: StageMachine, config: InsightConfig
) -> str:
    from lifecycle import cardfacts, churn, segments

    assert isinstance(signals, pd.DataFrame)
    try:
        with session.begin_nested():
            churn_note = churn.refresh(
                session, as_of=as_of, config=config, scorecard=scorecard, signals=signals,
                activation=(machine.activation.ratio, machine.activation.window_days),
            )
            cohort_note = segments.refresh(session, signals, segments=config.segments, tier_config=config.tiers)
            cohort_note += "; " + cardfacts.store(session, as_of=as_of, machine=machine)
    except Exception as exc:  # the insight must never cost the night its health scores
        log.exception("insight step failed")
        return f"failed: {type(exc).__name__}: {exc}"
    return f"churn: {churn_note}; {cohort_note}"


def backfill_health(
    session: Session,
    *,
    today: date,
    offsets: tuple[int, ...],
    scorecard: Scorecard,
    machine: StageMachine,
    starts: pd.Series | None = None,
) -> int:
    """Score past days (today − each offset) so that trends have something to compare with.

    Signals only read data up to each day, so a backfilled snapshot is what a nightly run would have stored then.
    Stages are not replayed (their history is kept as it is). `starts` (a first day per account id) limits each
    day to those accounts whose data had begun by then; without it every active account is scored. Returns the
    number of snapshots written.
    """
    written = 0
    for offset in sorted(offsets, reverse=True):
        day = today - timedelta(days=offset)
        frame = build_signals(
            session, day, activation_ratio=machine.activation.ratio, activation_window=machine.activation.window_days
        )
        if starts is not None:
            begun = starts.index[starts <= pd.Timestamp(day)]
            frame = frame.loc[frame.index.intersection(begun)]
            if frame.empty:
                continue
        written += recompute_health(session, day, scorecard, signals=frame).snapshots
    return written


# Active accounts never scored — no grade yet or "unknown", and no snapshot before the day (so an account whose usage
# was imported after a recompute that could not score it still counts) — with the first day of their account-total
# usage: index lookups per account.
_NEVER_SCORED_SQL = text(
    """
    SELECT a.id AS account_id,
           (SELECT MIN(u.day) FROM usage_daily u WHERE u.account_id = a.id AND u.feature = '') AS first_day
    FROM account a
    WHERE a.status = 'active' AND (a.health_grade IS NULL OR a.health_grade = 'unknown')
      AND NOT EXISTS (SELECT 1 FROM health_snapshot h WHERE h.account_id = a.id AND h.day < :as_of)
    """
).bindparams(bindparam("as_of", type_=Date()))


def backfill_new_accounts(
    session: Session, *, as_of: date, scorecard: Scorecard, machine: StageMachine, days: int = BACKFILL_DAYS
) -> int:
    """Daily health of the `days` days before `as_of` for the active accounts never scored, each from its first usage
    day on (accounts without usage before `as_of` have no history to score). Returns the snapshots written."""
    rows = session.execute(_NEVER_SCORED_SQL, {"as_of": as_of}).all()
    starts = pd.Series({int(a): pd.Timestamp(d) for a, d in rows if d is not None}, dtype="datetime64[ns]")
    starts = starts[starts < pd.Timestamp(as_of)]
    if starts.empty:
        return 0
    span = min(days, (as_of - starts.min().date()).days)
    log.info("backfilling %d day(s) of health for %d account(s) scored for the first time", span, len(starts))
    return backfill_health(session, today=as_of, offsets=tuple(range(1, span + 1)), scorecard=scorecard,
                           machine=machine, starts=starts)
