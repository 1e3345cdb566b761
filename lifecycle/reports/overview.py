"""Portfolio overview: stage distribution, totals (accounts, ARR by grade, average health) and one account's history.

Everything portfolio-wide is one GROUP BY over the account table, which carries each account's latest stage and
health; the per-grade and per-stage shapes are pivoted in pandas. ARR is grouped per currency too, and every total
is a `lifecycle.reports.money.Total`: converted into the reporting currency, or per currency where a rate is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import func, select
from sqlmodel import Session, col

from lifecycle.reports.money import Rates, Total, load_rates
from lifecycle.store.models import Account, HealthSnapshot, Owners, owned_by

GRADE_COLUMNS = ("red", "yellow", "green", "unknown")


def _owned(stmt: Any, owner_id: Owners, segment: str | None) -> Any:
    stmt = owned_by(stmt, owner_id)
    if segment is not None:
        stmt = stmt.where(func.lower(col(Account.segment)) == segment.casefold())
    return stmt


def stage_distribution(
    session: Session,
    *,
    owner_id: Owners = None,
    segment: str | None = None,
    order: Sequence[str] = (),
    rates: Rates | None = None,
) -> pd.DataFrame:
    """Active accounts per stage: `accounts`, `arr` (a `Total`) and a count per grade (`red`, `yellow`, `green`,
    `unknown`).

    Indexed by stage, in `order` first (the stage machine's order) and any other stage after, by name. Stages
    listed in `order` without accounts are left out.
    """
    grade = func.coalesce(col(Account.health_grade), "unknown")
    stmt = (
        select(col(Account.stage), grade, col(Account.currency), func.count(col(Account.id)),
               func.coalesce(func.sum(col(Account.arr)), 0.0))
        .where(col(Account.status) == "active")
        .group_by(col(Account.stage), grade, col(Account.currency))
    )
    rows = session.execute(_owned(stmt, owner_id, segment)).all()
    frame = pd.DataFrame.from_records(rows, columns=["stage", "grade", "currency", "accounts", "arr"])
    return stage_table(frame, order, rates or load_rates(session))


def stage_table(frame: pd.DataFrame, order: Sequence[str], rates: Rates) -> pd.DataFrame:
    """`stage_distribution`'s shape from rows of (stage, grade, currency, accounts, arr) sums."""
    frame = frame.copy()
    frame.loc[~frame["grade"].isin(GRADE_COLUMNS), "grade"] = "unknown"
    counts = frame.pivot_table(index="stage", columns="grade", values="accounts", aggfunc="sum", fill_value=0)
    counts = counts.reindex(columns=list(GRADE_COLUMNS), fill_value=0).astype(int)
    out = frame.groupby("stage").agg(accounts=("accounts", "sum")).join(counts)
    out["accounts"] = out["accounts"].astype(int)
    arr = rates.totals(frame, "stage") if len(frame) else {}
    out["arr"] = pd.Series([arr.get(s, rates.total({})) for s in out.index], index=out.index, dtype=object)
    known = [s for s in order if s in out.index]
    rest = sorted(s for s in out.index if s not in set(order))
    out = out.reindex(pd.Index(known + rest, name="stage"))
    return out[["accounts", "arr", *GRADE_COLUMNS]]


@dataclass(frozen=True)
class PortfolioTotals:
    """Head counts and money of a portfolio; the grade maps cover active accounts only."""

    active: int
    churned: int
    arr: Total  # active accounts
    churned_arr: Total
    arr_by_grade: dict[str, Total] = field(default_factory=dict)
    accounts_by_grade: dict[str, int] = field(default_factory=dict)
    average_health: float | None = None  # mean score of the active accounts that have one

    def arr_share(self, grade: str) -> float | None:
        """Percentage of the active ARR in `grade` (0 without ARR); None when the ARR is only known per currency."""
        part = self.arr_by_grade.get(grade)
        return part.share_of(self.arr) if part is not None else 0.0


def portfolio_totals(session: Session, *, owner_id: Owners = None, segment: str | None = None,
                     rates: Rates | None = None) -> PortfolioTotals:
    """Accounts active and churned, ARR in total and per grade, and average health, in one GROUP BY."""
    grade = func.coalesce(col(Account.health_grade), "unknown")
    stmt = select(
        col(Account.status),
        grade,
        col(Account.currency),
        func.count(col(Account.id)),
        func.coalesce(func.sum(col(Account.arr)), 0.0),
        func.coalesce(func.sum(col(Account.health_score)), 0.0),
        func.count(col(Account.health_score)),
    ).group_by(col(Account.status), grade, col(Account.currency))
    rows = session.execute(_owned(stmt, owner_id, segment)).all()
    columns = ["status", "grade", "currency", "accounts", "arr", "score_sum", "scored"]
    frame = pd.DataFrame.from_records(rows, columns=columns)
    frame.loc[~frame["grade"].isin(GRADE_COLUMNS), "grade"] = "unknown"
    rates = rates or load_rates(session)
    active = frame[frame["status"] != "churned"]
    churned = frame[frame["status"] == "churned"]
    scored = int(active["scored"].sum())
    by_grade = active.groupby("grade")["accounts"].sum()
    arr_by_grade = rates.totals(active, "grade") if len(active) else {}
    return PortfolioTotals(
        active=int(active["accounts"].sum()),
        churned=int(churned["accounts"].sum()),
        arr=rates.sum(active["arr"], active["currency"]),
        churned_arr=rates.sum(churned["arr"], churned["currency"]),
        arr_by_grade={g: arr_by_grade.get(g, rates.total({})) for g in GRADE_COLUMNS},
        accounts_by_grade={g: int(by_grade.get(g, 0)) for g in GRADE_COLUMNS},
        average_health=round(float(active["score_sum"].sum()) / scored, 1) if scored else None,
    )


def health_history(session: Session, account_id: int, days: int = 90, *, until: date | None = None) -> pd.DataFrame:
    """One account's daily health (`day`, `score`, `grade`), oldest first, for the `days` days up to `until`.

    Without `until` the window ends at the account's latest snapshot, so a portfolio not recomputed lately still
    shows its last three months rather than an empty chart.
    """
    if until is None:
        until = session.execute(
            select(func.max(col(HealthSnapshot.day))).where(col(HealthSnapshot.account_id) == account_id)
        ).scalar_one()
    if until is None:
        return pd.DataFrame(
            {"day": pd.Series(dtype=object), "score": pd.Series(dtype=float), "grade": pd.Series(dtype=object)}
        )
    rows = session.execute(
        select(col(HealthSnapshot.day), col(HealthSnapshot.score), col(HealthSnapshot.grade))
        .where(
            col(HealthSnapshot.account_id) == account_id,
            col(HealthSnapshot.day) > until - timedelta(days=days),
            col(HealthSnapshot.day) <= until,
        )
        .order_by(col(HealthSnapshot.day))
    ).all()
    frame = pd.DataFrame.from_records(rows, columns=["day", "score", "grade"])
    frame["score"] = frame["score"].astype(float)
    return frame
