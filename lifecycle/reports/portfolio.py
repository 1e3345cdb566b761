"""Portfolio lists: accounts at risk (with their reasons) and upcoming renewals, each a few SQL queries over the
whole portfolio."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any, TypeVar

import pandas as pd
from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import aliased
from sqlmodel import Session, col

from lifecycle.reports.money import Rates, Total, load_rates
from lifecycle.scoring import risk
from lifecycle.scoring.health import CRITICAL_KEY, Scorecard, default_scorecard, trends
from lifecycle.scoring.risk import RiskReason
from lifecycle.store.models import Account, HealthSnapshot, Owners, User, owned_by

_S = TypeVar("_S", bound=Select)


@dataclass(frozen=True)
class Scope:
    """Which accounts a list covers: one owner's, a team's, one segment's, or all."""

    owner_id: Owners = None  # one owner, a team (several), or everyone
    segment: str | None = None

    def apply(self, stmt: _S) -> _S:
        stmt = owned_by(stmt, self.owner_id)
        if self.segment is not None:
            stmt = stmt.where(func.lower(col(Account.segment)) == self.segment.casefold())
        return stmt


@dataclass(frozen=True)
class PortfolioRow:
    account_id: int
    name: str
    owner: str | None
    arr: float
    currency: str
    score: float | None
    grade: str | None
    delta_7: float | None
    renewal_date: date | None
    stage: str
    top_drag: str | None
    reasons: tuple[RiskReason, ...] = ()  # why it is at risk (the at-risk list only)


def _latest_day(session: Session) -> date | None:
    return session.execute(select(func.max(col(HealthSnapshot.day)))).scalar_one()


def _top_drags(session: Session, account_ids: list[int], day: date | None) -> dict[int, str]:
    """For each account, the measure that costs its score the most on `day` (from the stored contributions)."""
    if not account_ids or day is None:
        return {}
    rows = session.execute(
        select(col(HealthSnapshot.account_id), col(HealthSnapshot.measures)).where(
            col(HealthSnapshot.account_id).in_(account_ids), col(HealthSnapshot.day) == day
        )
    ).all()
    out: dict[int, str] = {}
    for account_id, measures in rows:
        costs = [
            (float(m.get("weight") or 0) * (100 - float(m.get("points") or 0)), name)
            for name, m in (measures or {}).items()
            if isinstance(m, dict) and m.get("data")
        ]
        if costs:
            cost, name = max(costs)
            if cost > 0:
                out[account_id] = name
    return out


def _listing(day: date | None) -> tuple[Any, Any]:
    """The columns every portfolio list shows, for active accounts, with the change in score over 7 days."""
    past = aliased(HealthSnapshot)
    delta_7 = col(Account.health_score) - col(past.score)
    stmt: Any = (
        select(
            col(Account.id).label("account_id"),
            col(Account.name).label("name"),
            col(User.name).label("owner"),
            col(Account.arr).label("arr"),
            col(Account.currency).label("currency"),
            col(Account.health_score).label("score"),
            col(Account.health_grade).label("grade"),
            delta_7.label("delta_7"),
            col(Account.renewal_date).label("renewal_date"),
            col(Account.stage).label("stage"),
        )
        .outerjoin(User, col(User.id) == col(Account.owner_id))
        .outerjoin(
            past,
            and_(col(past.account_id) == col(Account.id), col(past.day) == (day - timedelta(days=7) if day else None)),
        )
        .where(col(Account.status) == "active")
    )
    return stmt, delta_7


def _collect(session: Session, found: Sequence[Any], day: date | None, limit: int | None) -> list[PortfolioRow]:
    """`PortfolioRow`s for the first `limit` matches, each with the measure that drags it most."""
    shown = found[:limit] if limit else found
    drags = _top_drags(session, [r.account_id for r in shown], day)
    return [
        PortfolioRow(
            account_id=r.account_id,
            name=r.name,
            owner=r.owner,
            arr=float(r.arr or 0),
            currency=r.currency,
            score=r.score,
            grade=r.grade,
            delta_7=float(r.delta_7) if r.delta_7 is not None else None,
            renewal_date=r.renewal_date,
            stage=r.stage,
            top_drag=drags.get(r.account_id),
        )
        for r in shown
    ]


def _arr_total(found: Sequence[Any], rates: Rates) -> Total:
    """The ARR of every matched row (`arr`, `currency`), as one total."""
    return rates.sum([r.arr or 0.0 for r in found], [r.currency for r in found])


def at_risk(
    session: Session, scope: Scope, *, limit: int | None = None, rates: Rates | None = None,
    scorecard: Scorecard | None = None,
) -> tuple[list[PortfolioRow], int, Total]:
    """Active accounts at risk by the definition of lifecycle/scoring/risk.py (red, a critical signal, yellow or red and
    falling fast, or a churn probability at or above the threshold), each with its reasons; largest ARR first.

    Returns (rows, total count, total ARR at stake) — the totals cover all matches even when `limit` cuts the rows.
    The score changes are against the latest snapshot on or before 7 (30) days before the portfolio's latest
    snapshot day, as in the health trend and the alert rules.
    """
    card = scorecard or default_scorecard()
    rates = rates or load_rates(session)
    day = _latest_day(session)
    stmt, _ = _listing(day)
    latest = aliased(HealthSnapshot)
    # A critical signal caps the grade at yellow at most and a fall counts only for yellow or red accounts, so
    # only those are read, plus the ones whose churn probability alone puts them at risk.
    stmt = (
        stmt.add_columns(col(Account.churn_probability).label("churn_probability"),
                         col(latest.measures)[CRITICAL_KEY].label("critical"))
        .outerjoin(latest, and_(col(latest.account_id) == col(Account.id),
                                col(latest.day) == col(Account.health_at)))
        .where(or_(col(Account.health_grade).in_(("red", "yellow")),
                   col(Account.churn_probability) >= card.at_risk.churn_probability))
        .order_by(rates.in_sql(col(Account.arr), col(Account.currency), as_written=True).desc(), col(Account.name))
    )
    candidates = session.execute(scope.apply(stmt)).all()
    if not candidates:
        return [], 0, _arr_total([], rates)
    frame = pd.DataFrame.from_records(
        [(r.account_id, r.grade, r.churn_probability, r.critical) for r in candidates],
        columns=["account_id", "health_grade", "churn_probability", "critical"],
    ).set_index("account_id")
    # Without any snapshot there is no trend to read.
    deltas = trends(session, frame.index.tolist(), day) if day is not None else pd.DataFrame(dtype=float)
    frame = frame.join(deltas.reindex(columns=["delta_7", "delta_30"]))
    why = risk.reasons(frame, card.at_risk)
    found = [r for r in candidates if why[r.account_id]]
    rows = _collect(session, found, day, limit)
    rows = [
        replace(row, delta_7=_present(frame.at[row.account_id, "delta_7"]), reasons=tuple(why[row.account_id]))
        for row in rows
    ]
    return rows, len(found), _arr_total(found, rates)


def _present(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def renewals(
    session: Session, scope: Scope, *, days: int, today: date, limit: int | None = None, rates: Rates | None = None
) -> tuple[list[PortfolioRow], int, Total, int]:
    """Active accounts renewing within `days` of `today`, soonest first.

    Returns (rows, count, ARR renewing, how many of them are yellow or red).
    """
    day = _latest_day(session)
    stmt, _ = _listing(day)
    stmt = stmt.where(
        col(Account.renewal_date) >= today, col(Account.renewal_date) <= today + timedelta(days=days)
    ).order_by(col(Account.renewal_date), col(Account.name))
    found = session.execute(scope.apply(stmt)).all()
    risky = sum(1 for r in found if r.grade in ("yellow", "red"))
    total = _arr_total(found, rates or load_rates(session, on=today))
    return _collect(session, found, day, limit), len(found), total, risky
