"""The whole-portfolio recompute: signals → health scores and snapshots → automatic stage rules → insight.

Health is scored with each account's current stage weights; the stage rules then see today's grade. A stage change
made here therefore shows in the health weights from the next recompute on. Running it twice on one day gives the
same snapshots and moves nothing the second time.

The first recompute of an account (one never scored, e.g. just imported with its history, or whose usage arrived
after a recompute that could not score it) first backfills its daily health for the `BACKFILL_DAYS` days before,
from its first usage day on, so that "down 14 in 7 days", the at-risk list's "falling" and the health-drop alert
are known on day one instead of a month later.

Incremental recompute: database triggers (and the usage roll-ups) mark in `account_change` every account whose
inputs changed — usage, tickets, NPS answers, notes, account fields, stage. `recompute(..., accounts=ids)` scores
only those accounts (the same frame, scores, snapshots and stage rules as a full run gives them: nothing in the
health or stage rules compares one account with another). `recompute_changed` is what `csbot recompute` runs: when
a full recompute of the same day with the same scorecard and stage machine already ran (`recompute_state`), only the
marked accounts are recomputed; otherwise — a new day, on which every account's windows, recency and renewal
proximity moved, or a changed configuration — it recomputes every account (from the roll-ups, vectorised). So the
nightly job always runs in full (it is the first run of its day), and runs later the same day (an import, `csbot
recompute`, the server's refresh of ingested accounts, `refresh_changed`) cost only what changed. A run clears the
marks it saw (by version, so a change made while it runs is kept for the next one); its own stage moves mark their
accounts, which the next incremental run rescores with the new stage weights, as a second full run would.
The insight step (churn model, cohorts, tiers) runs with full recomputes only.

Insight comes last: the churn model is trained when there is none (or it is older than `retrain_days`), every active
account is scored with its probability and reasons, cohorts and tiers are refreshed, and what the account card
shows is stored for the day (`lifecycle.reports.cardfacts`). It runs inside a savepoint:
a failure there is reported in the summary and rolls back only the insight, never the health and stage results.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta

import pandas as pd
from sqlalchemy import Date, bindparam, text
from sqlmodel import Session

from lifecycle.insight import churn, segments
from lifecycle.insight.churn import InsightConfig, default_insight_config
from lifecycle.reports import cardfacts
from lifecycle.scoring.health import Scorecard, recompute_health
from lifecycle.scoring.signals import build_signals, refresh_stages
from lifecycle.scoring.stages import StageMachine, apply_automatic_rules
from lifecycle.store.bulkwrite import delete_rows
from lifecycle.store.models import AccountChange, RecomputeState, utcnow

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
    mode: str = "full"  # full (every account), incremental (the changed ones), accounts (a given subset)
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
    accounts: Iterable[int] | None = None,
) -> RecomputeSummary:
    """Recompute health and stages for every account as of `as_of`, then the insight (the caller commits).

    With `backfill`, accounts never scored before get their daily health of the days before first (see the module
    docstring). `accounts` limits the run to those ids (no insight step then); a full run records its day and
    configuration in `recompute_state`. Either way the change marks seen at the start are cleared."""
    ids = None if accounts is None else sorted({int(a) for a in accounts})
    marks = read_marks(session, ids)
    timings: dict[str, float] = {}
    started = last = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        timings[name] = round(now - last, 3)
        last = now

    backfilled = 0
    if backfill:
        backfilled = backfill_new_accounts(session, as_of=as_of, scorecard=scorecard, machine=machine, accounts=ids)
        if backfilled:
            lap("backfill")
    frame = build_signals(
        session, as_of, activation_ratio=machine.activation.ratio, activation_window=machine.activation.window_days,
        accounts=ids,
    )
    lap("signals")
    run = recompute_health(session, as_of, scorecard, signals=frame)
    lap("health")
    moves = apply_automatic_rules(session, run.signals, as_of, machine)
    if moves:
        refresh_stages(session, run.signals)
    lap("stages")
    note = ""
    if with_insight and ids is None:
        note = _insight(session, as_of, run.signals, scorecard, machine, insight or default_insight_config())
        lap("insight")
    clear_marks(session, marks)
    if ids is None:
        session.merge(RecomputeState(name=STATE_NAME, as_of=as_of, digest=config_digest(scorecard, machine),
                                     finished_at=utcnow()))
    lap("marks")
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
        mode="full" if ids is None else "accounts",
        signals=run.signals,
    )


STATE_NAME = "recompute"


def config_digest(scorecard: Scorecard, machine: StageMachine) -> str:
    """What a full recompute ran with: a new scorecard or stage machine means every score may change."""
    text_ = scorecard.model_dump_json() + machine.model_dump_json()
    return hashlib.sha256(text_.encode()).hexdigest()[:16]


def read_marks(session: Session, accounts: Iterable[int] | None = None) -> list[tuple[int, int]]:
    """(account id, version) of the change marks, of every account or of `accounts`."""
    rows = session.connection().exec_driver_sql("SELECT account_id, version FROM account_change").fetchall()
    marks = [(int(a), int(v)) for a, v in rows]
    if accounts is not None:
        wanted = {int(a) for a in accounts}
        marks = [m for m in marks if m[0] in wanted]
    return marks


def clear_marks(session: Session, marks: Iterable[tuple[int, int]]) -> None:
    """Remove the marks a run has dealt with, unless their account changed again since (a higher version): one
    staged DELETE (`lifecycle.store.bulkwrite.delete_rows`) on (account, version)."""
    delete_rows(session, AccountChange.__table__, ("account_id", "version"), list(marks))  # type: ignore[attr-defined]


def recompute_changed(
    session: Session,
    *,
    as_of: date,
    scorecard: Scorecard,
    machine: StageMachine,
    insight: InsightConfig | None = None,
    with_insight: bool = True,
) -> RecomputeSummary:
    """The incremental recompute (see the module docstring): only the marked accounts when a full run of `as_of`
    with this configuration is on record, else a full run. The caller commits."""
    state = session.get(RecomputeState, STATE_NAME)
    if state is None or state.as_of != as_of or state.digest != config_digest(scorecard, machine):
        return recompute(session, as_of=as_of, scorecard=scorecard, machine=machine, insight=insight,
                         with_insight=with_insight)
    summary = refresh_changed(session, as_of=as_of, scorecard=scorecard, machine=machine)
    return summary or RecomputeSummary(as_of=as_of, accounts=0, mode="incremental")


def refresh_changed(
    session: Session, *, as_of: date, scorecard: Scorecard, machine: StageMachine
) -> RecomputeSummary | None:
    """Recompute the marked accounts only, whatever day the last full run was (the server's refresh of freshly
    ingested accounts); None when nothing is marked. The caller commits."""
    started = time.perf_counter()
    ids = [a for a, _ in read_marks(session)]
    if not ids:
        return None
    summary = recompute(session, as_of=as_of, scorecard=scorecard, machine=machine, with_insight=False,
                        accounts=ids)
    summary.mode = "incremental"
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


def _insight(
    session: Session, as_of: date, signals: object, scorecard: Scorecard, machine: StageMachine, config: InsightConfig
) -> str:
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
    accounts: Iterable[int] | None = None,
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
            session, day, activation_ratio=machine.activation.ratio, activation_window=machine.activation.window_days,
            accounts=accounts,
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
    session: Session, *, as_of: date, scorecard: Scorecard, machine: StageMachine, days: int = BACKFILL_DAYS,
    accounts: Iterable[int] | None = None,
) -> int:
    """Daily health of the `days` days before `as_of` for the active accounts never scored (of `accounts`, when
    given), each from its first usage day on (accounts without usage before `as_of` have no history to score).
    Returns the snapshots written."""
    rows = session.execute(_NEVER_SCORED_SQL, {"as_of": as_of}).all()
    if accounts is not None:
        wanted = {int(a) for a in accounts}
        rows = [r for r in rows if int(r[0]) in wanted]
    starts = pd.Series({int(a): pd.Timestamp(d) for a, d in rows if d is not None}, dtype="datetime64[ns]")
    starts = starts[starts < pd.Timestamp(as_of)]
    if starts.empty:
        return 0
    span = min(days, (as_of - starts.min().date()).days)
    log.info("backfilling %d day(s) of health for %d account(s) scored for the first time", span, len(starts))
    return backfill_health(session, today=as_of, offsets=tuple(range(1, span + 1)), scorecard=scorecard,
                           machine=machine, starts=starts, accounts=starts.index.tolist())


def portfolio_insight(
    session: Session, *, as_of: date, signals: pd.DataFrame, scorecard: Scorecard, machine: StageMachine,
    insight: InsightConfig | None = None,
) -> str:
    """The insight step of a full run (churn, cohorts, tiers, card facts) on a whole-portfolio signals frame, for
    runs whose health and stages were computed in parts (`lifecycle.shards`); in a savepoint, as in `recompute`."""
    return _insight(session, as_of, signals, scorecard, machine, insight or default_insight_config())


def record_full_run(session: Session, *, as_of: date, scorecard: Scorecard, machine: StageMachine) -> None:
    """Record in `recompute_state` that every account was recomputed for `as_of` with this configuration."""
    session.merge(RecomputeState(name=STATE_NAME, as_of=as_of, digest=config_digest(scorecard, machine),
                                 finished_at=utcnow()))
