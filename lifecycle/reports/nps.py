"""NPS analytics: the score, its categories and response rate for any slice of the portfolio, trends and comments.

NPS = % promoters (9–10) − % detractors (0–6); passives (7–8) count in the total only. A slice is any mix of one
account, one owner's accounts, a segment, a (current) stage and a period of response dates. Every function here is one
aggregate SQL query (plus pandas for the monthly trend), whatever the number of accounts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd
from sqlalchemy import Select, and_, case, func, select
from sqlmodel import Session, col

from lifecycle.store.models import Account, NpsResponse, NpsSurvey

PROMOTER_FROM = 9  # 9–10
PASSIVE_FROM = 7  # 7–8; anything below is a detractor

Dimension = Literal["segment", "stage", "account"]
_S = TypeVar("_S", bound=Select)


@dataclass(frozen=True)
class NpsSlice:
    """Which responses count: account filters (one account, an owner, a segment, a current stage) and a period."""

    account_id: int | None = None
    owner_id: int | None = None
    segment: str | None = None
    stage: str | None = None
    since: date | None = None
    until: date | None = None

    def accounts(self, stmt: _S) -> _S:
        if self.account_id is not None:
            stmt = stmt.where(col(Account.id) == self.account_id)
        if self.owner_id is not None:
            stmt = stmt.where(col(Account.owner_id) == self.owner_id)
        if self.segment is not None:
            stmt = stmt.where(func.lower(col(Account.segment)) == self.segment.casefold())
        if self.stage is not None:
            stmt = stmt.where(col(Account.stage) == self.stage)
        return stmt

    def period(self, stmt: _S, column: Any) -> _S:
        # `until` is a whole day: everything before the next midnight counts.
        if self.since is not None:
            stmt = stmt.where(column >= datetime.combine(self.since, time.min))
        if self.until is not None:
            stmt = stmt.where(column < datetime.combine(self.until + timedelta(days=1), time.min))
        return stmt


@dataclass(frozen=True)
class NpsSummary:
    """Counts, NPS and response rate of one slice; `nps` is None when nobody answered."""

    responses: int
    promoters: int
    passives: int
    detractors: int
    nps: float | None
    surveys_sent: int
    surveys_answered: int
    response_rate: float | None  # answered / sent surveys in the period; None when no survey was sent

    def share(self, category: Literal["promoter", "passive", "detractor"]) -> float:
        """Percentage of the responses in `category` (0 when there are none)."""
        count = {"promoter": self.promoters, "passive": self.passives, "detractor": self.detractors}[category]
        return 100.0 * count / self.responses if self.responses else 0.0


@dataclass(frozen=True)
class NpsComment:
    score: int
    comment: str
    account_name: str
    day: date


def nps_value(promoters: float, detractors: float, responses: float) -> float | None:
    """NPS from counts, rounded to one decimal; None without responses."""
    if not responses:
        return None
    return round(100.0 * (promoters - detractors) / responses, 1)


def _nps_column(counts: pd.DataFrame) -> np.ndarray:
    """NPS of each row of a frame of category counts, one decimal; NaN for rows without responses."""
    responses = counts["responses"].to_numpy(dtype=float)
    net = counts["promoters"].to_numpy(dtype=float) - counts["detractors"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(responses > 0, np.round(100.0 * net / responses, 1), np.nan)


def _category_counts() -> tuple[Any, Any, Any]:
    score = col(NpsResponse.score)
    return (
        func.coalesce(func.sum(case((score >= PROMOTER_FROM, 1), else_=0)), 0),
        func.coalesce(func.sum(case((and_(score >= PASSIVE_FROM, score < PROMOTER_FROM), 1), else_=0)), 0),
        func.coalesce(func.sum(case((score < PASSIVE_FROM, 1), else_=0)), 0),
    )


def nps_summary(
    session: Session,
    *,
    account_id: int | None = None,
    owner_id: int | None = None,
    segment: str | None = None,
    stage: str | None = None,
    since: date | None = None,
    until: date | None = None,
) -> NpsSummary:
    """NPS of the responses in the slice, with counts per category and the survey response rate."""
    where = NpsSlice(account_id, owner_id, segment, stage, since, until)
    stmt = select(func.count(col(NpsResponse.id)), *_category_counts()).join(
        Account, col(Account.id) == col(NpsResponse.account_id)
    )
    stmt = where.period(where.accounts(stmt), col(NpsResponse.responded_at))
    responses, promoters, passives, detractors = (int(v) for v in session.execute(stmt).one())

    # A survey counts as answered when it is marked so or a response points at it (imports may skip the status).
    answered_flag = case(
        (
            (col(NpsSurvey.status) == "answered") | col(NpsResponse.id).is_not(None),
            1,
        ),
        else_=0,
    )
    surveys = (
        select(func.count(col(NpsSurvey.id)), func.coalesce(func.sum(answered_flag), 0))
        .join(Account, col(Account.id) == col(NpsSurvey.account_id))
        .outerjoin(NpsResponse, col(NpsResponse.survey_id) == col(NpsSurvey.id))
        .where(col(NpsSurvey.sent_at).is_not(None))
    )
    surveys = where.period(where.accounts(surveys), col(NpsSurvey.sent_at))
    sent, answered = (int(v) for v in session.execute(surveys).one())
    return NpsSummary(
        responses=responses,
        promoters=promoters,
        passives=passives,
        detractors=detractors,
        nps=nps_value(promoters, detractors, responses),
        surveys_sent=sent,
        surveys_answered=answered,
        response_rate=answered / sent if sent else None,
    )


def month_start(day: date, back: int = 0) -> date:
    """The first day of the month `back` months before the month of `day`."""
    index = day.year * 12 + day.month - 1 - back
    return date(index // 12, index % 12 + 1, 1)


def nps_trend(
    session: Session,
    *,
    account_id: int | None = None,
    owner_id: int | None = None,
    segment: str | None = None,
    stage: str | None = None,
    months: int = 12,
    today: date,
) -> pd.DataFrame:
    """NPS per calendar month for the last `months` months up to `today`'s month, oldest first.

    Indexed by each month's first day (`month`); columns `responses`, `promoters`, `passives`, `detractors` and
    `nps` (NaN for a month without responses). Every month of the window is present.
    """
    start = month_start(today, months - 1)
    where = NpsSlice(account_id, owner_id, segment, stage, start, today)
    stmt = select(col(NpsResponse.responded_at), col(NpsResponse.score)).join(
        Account, col(Account.id) == col(NpsResponse.account_id)
    )
    rows = session.execute(where.period(where.accounts(stmt), col(NpsResponse.responded_at))).all()
    frame = pd.DataFrame.from_records(rows, columns=["responded_at", "score"])
    scores = frame["score"].to_numpy(dtype=float)
    frame["month"] = pd.to_datetime(frame["responded_at"]).dt.to_period("M").dt.to_timestamp()
    frame["promoters"] = (scores >= PROMOTER_FROM).astype(int)
    frame["passives"] = ((scores >= PASSIVE_FROM) & (scores < PROMOTER_FROM)).astype(int)
    frame["detractors"] = (scores < PASSIVE_FROM).astype(int)
    frame["responses"] = 1
    counts = frame.groupby("month")[["responses", "promoters", "passives", "detractors"]].sum()
    months_index = pd.DatetimeIndex(
        [pd.Timestamp(month_start(today, back)) for back in range(months - 1, -1, -1)], name="month"
    )
    counts = counts.reindex(months_index, fill_value=0).astype(int)
    counts["nps"] = _nps_column(counts)
    return counts


# Segments compare case-insensitively everywhere (as in the filters), so "SMB" and "smb" are one group.
_DIMENSIONS: dict[str, Any] = {
    "segment": func.lower(col(Account.segment)),
    "stage": col(Account.stage),
    "account": col(Account.name),
}


def nps_by(
    session: Session,
    dimension: Dimension,
    *,
    owner_id: int | None = None,
    segment: str | None = None,
    stage: str | None = None,
    since: date | None = None,
    until: date | None = None,
) -> pd.DataFrame:
    """NPS per segment (case-insensitive), current stage or account in one GROUP BY; most responses first.

    Indexed by the dimension's value (the account's name; "—" for accounts without a segment); columns
    `responses`, `promoters`, `passives`, `detractors`, `nps`. Groups without responses do not appear.
    """
    key = func.coalesce(_DIMENSIONS[dimension], "—")
    # Two accounts may share a name: they stay two rows.
    groups = [key, col(Account.id)] if dimension == "account" else [key]
    stmt = (
        select(key.label(dimension), func.count(col(NpsResponse.id)), *_category_counts())
        .join(Account, col(Account.id) == col(NpsResponse.account_id))
        .group_by(*groups)
    )
    where = NpsSlice(None, owner_id, segment, stage, since, until)
    rows = session.execute(where.period(where.accounts(stmt), col(NpsResponse.responded_at))).all()
    frame = pd.DataFrame.from_records(
        rows, columns=[dimension, "responses", "promoters", "passives", "detractors"]
    ).set_index(dimension)
    frame = frame.astype(int)
    frame["nps"] = _nps_column(frame)
    order = np.lexsort((frame.index.to_numpy(dtype=str), -frame["responses"].to_numpy()))
    return frame.iloc[order]


def latest_comments(
    session: Session,
    *,
    account_id: int | None = None,
    owner_id: int | None = None,
    segment: str | None = None,
    stage: str | None = None,
    since: date | None = None,
    until: date | None = None,
    limit: int = 5,
) -> list[NpsComment]:
    """The newest responses that came with a comment, newest first."""
    stmt = (
        select(col(NpsResponse.score), col(NpsResponse.comment), col(Account.name), col(NpsResponse.responded_at))
        .join(Account, col(Account.id) == col(NpsResponse.account_id))
        .where(col(NpsResponse.comment).is_not(None), func.trim(col(NpsResponse.comment)) != "")
        .order_by(col(NpsResponse.responded_at).desc(), col(NpsResponse.id).desc())
        .limit(limit)
    )
    where = NpsSlice(account_id, owner_id, segment, stage, since, until)
    rows = session.execute(where.period(where.accounts(stmt), col(NpsResponse.responded_at))).all()
    return [NpsComment(int(s), str(c).strip(), str(n), at.date()) for s, c, n, at in rows]
