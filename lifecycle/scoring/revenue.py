"""Revenue history: recording ARR changes, and reading every account's ARR and status at any date.

`arr_change` holds one row per change of an account's recurring revenue (kinds in `CHANGE_KINDS`). Importers
call `record_arr_changes` with each account's ARR, seats and status before and after an import; the kind is
decided here, for all rows at once, and the rows are written with one bulk upsert (re-importing the same file on
the same day rewrites the same rows).

`revenue_events` reads the history for a slice of the portfolio in one query. Accounts that have no history at
all (imported before the table existed, or created by hand) get a history derived from the account itself: a
`new` row on the contract start (or the creation day) with today's ARR and seats, and a `churn` row on
`churned_on` for a churned account. `state_at` then gives each account's ARR, seats and whether it is a
customer at the end of any day, as one pandas group-by.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from sqlalchemy import Select, and_, func, literal, select, union_all
from sqlmodel import Session, col

from lifecycle.store.db import upsert
from lifecycle.store.models import Account, ArrChange, utcnow

_S = TypeVar("_S", bound=Select)

CHANGE_KINDS = ("new", "expansion", "contraction", "churn", "reactivation")
EVENT_COLUMNS = ["account_id", "day", "kind", "arr_before", "arr_after", "seats_before", "seats_after", "reason"]


@dataclass(frozen=True)
class ArrUpdate:
    """An account's commercial facts before and after an update; `status_before` None means a new account."""

    account_id: int
    arr_after: float
    status_after: str = "active"
    seats_after: int = 0
    arr_before: float = 0.0
    status_before: str | None = None
    seats_before: int = 0
    reason: str | None = None


def classify_changes(updates: pd.DataFrame) -> pd.Series:
    """The kind of change of each row of a frame with ArrUpdate's columns; None where nothing changed.

    new: no previous status and now an active customer · churn: active → churned · reactivation: churned →
    active · expansion / contraction: active both times, with more / less ARR (seats decide when ARR is
    unchanged).
    """
    before = updates["status_before"].astype(object)
    after = updates["status_after"].astype(object)
    arr_b = updates["arr_before"].to_numpy(dtype=float)
    arr_a = updates["arr_after"].to_numpy(dtype=float)
    seats_b = updates["seats_before"].to_numpy(dtype=float)
    seats_a = updates["seats_after"].to_numpy(dtype=float)
    is_new = (before.isna() & (after == "active")).to_numpy(dtype=bool)
    both = ((before == "active") & (after == "active")).to_numpy(dtype=bool)
    churn = ((before == "active") & (after == "churned")).to_numpy(dtype=bool)
    back = ((before == "churned") & (after == "active")).to_numpy(dtype=bool)
    arr_up, arr_down = arr_a > arr_b, arr_a < arr_b
    same_arr = arr_a == arr_b
    up = both & (arr_up | (same_arr & (seats_a > seats_b)))
    down = both & (arr_down | (same_arr & (seats_a < seats_b)))
    kinds = np.select([is_new, churn, back, up, down], ["new", "churn", "reactivation", "expansion", "contraction"],
                      default="")
    return pd.Series(kinds, index=updates.index, dtype=object).replace("", None)


def record_arr_changes(
    session: Session, updates: Iterable[ArrUpdate], *, day: date, source: str = "import"
) -> int:
    """Record the ARR changes among `updates` on `day`; returns the number of rows written. Flushes, no commit.

    A churn records the ARR lost (`arr_before` = the ARR before, `arr_after` = 0, seats likewise); a
    reactivation starts from 0. Rows where nothing changed are skipped. One bulk upsert on
    (account, day, kind): the same update recorded twice on one day leaves one row.
    """
    frame = pd.DataFrame([u.__dict__ for u in updates], columns=list(ArrUpdate.__dataclass_fields__))
    if frame.empty:
        return 0
    frame["kind"] = classify_changes(frame)
    frame = frame.dropna(subset=["kind"])
    if frame.empty:
        return 0
    churn = frame["kind"] == "churn"
    back = frame["kind"] == "reactivation"
    frame.loc[churn, ["arr_after", "seats_after"]] = 0
    frame.loc[back, ["arr_before", "seats_before"]] = 0
    now = utcnow()
    records: list[Any] = list(frame.itertuples(index=False))
    rows = [
        {"account_id": int(r.account_id), "day": day, "kind": str(r.kind), "arr_before": float(r.arr_before),
         "arr_after": float(r.arr_after), "seats_before": int(r.seats_before), "seats_after": int(r.seats_after),
         "reason": r.reason if isinstance(r.reason, str) and r.reason else None, "source": source,
         "created_at": now}
        for r in records
    ]
    upsert(session, ArrChange, rows, conflict=["account_id", "day", "kind"],
           update=["arr_before", "arr_after", "seats_before", "seats_after", "reason", "source"])
    session.flush()
    return len(rows)


@dataclass(frozen=True)
class Slice:
    """Which accounts an analysis covers: some owners' books, one segment (case-insensitive), one account."""

    owner_ids: tuple[int, ...] | None = None
    segment: str | None = None
    account_id: int | None = None

    def where(self, stmt: _S) -> _S:
        """`stmt` restricted to the slice's accounts (`stmt` must select from or join `account`)."""
        if self.owner_ids is not None:
            stmt = stmt.where(col(Account.owner_id).in_(list(self.owner_ids)))
        if self.segment is not None:
            stmt = stmt.where(func.lower(col(Account.segment)) == self.segment.casefold())
        if self.account_id is not None:
            stmt = stmt.where(col(Account.id) == self.account_id)
        return stmt


def revenue_events(session: Session, scope: Slice | None = None, *, until: date | None = None) -> pd.DataFrame:
    """Every ARR change of the slice's accounts (up to `until`), oldest first, in one query.

    Columns EVENT_COLUMNS plus `segment`, `contract_start` and `currency` (the account's: ARR is as recorded);
    accounts without recorded history get the derived rows described in the module docstring.
    """
    scope = scope or Slice()
    a = Account.__table__  # type: ignore[attr-defined]
    c = ArrChange.__table__  # type: ignore[attr-defined]
    has_history = select(c.c.account_id).where(c.c.account_id == a.c.id).exists()
    start = func.coalesce(a.c.contract_start, func.date(a.c.created_at))
    recorded = select(
        c.c.account_id, c.c.day, c.c.kind, c.c.arr_before, c.c.arr_after, c.c.seats_before, c.c.seats_after,
        c.c.reason, a.c.segment, a.c.contract_start, a.c.currency,
    ).select_from(c.join(a, a.c.id == c.c.account_id))
    derived_new = select(
        a.c.id, start, literal("new"), literal(0.0), a.c.arr, literal(0), a.c.seats, literal(None),
        a.c.segment, a.c.contract_start, a.c.currency,
    ).where(~has_history)
    derived_churn = select(
        a.c.id, a.c.churned_on, literal("churn"), a.c.arr, literal(0.0), a.c.seats, literal(0), a.c.churn_reason,
        a.c.segment, a.c.contract_start, a.c.currency,
    ).where(~has_history, and_(a.c.status == "churned", a.c.churned_on.is_not(None)))
    parts = []
    for part in (recorded, derived_new, derived_churn):
        part = scope.where(part)
        if until is not None:
            part = part.where(list(part.selected_columns)[1] <= until)
        parts.append(part)
    rows = session.execute(union_all(*parts)).all()
    frame = pd.DataFrame.from_records(rows, columns=[*EVENT_COLUMNS, "segment", "contract_start", "currency"])
    frame["day"] = pd.to_datetime(frame["day"])
    frame["contract_start"] = pd.to_datetime(frame["contract_start"])
    for name in ("arr_before", "arr_after"):
        frame[name] = frame[name].astype(float)
    for name in ("seats_before", "seats_after", "account_id"):
        frame[name] = frame[name].astype("int64")
    reason = frame["reason"].astype(object)
    frame["reason"] = reason.where(reason.notna(), None)
    frame["order"] = frame["kind"].map({k: i for i, k in enumerate(CHANGE_KINDS)}).fillna(9)
    # Within one day a churn comes after the changes that preceded it, so the day's last row is the day's end.
    frame = frame.sort_values(["account_id", "day", "order"], kind="stable").drop(columns="order")
    return frame.reset_index(drop=True)


def state_at(events: pd.DataFrame, day: date | pd.Timestamp) -> pd.DataFrame:
    """Each account's ARR, seats and whether it is a customer at the end of `day` (changes on `day` count).

    Indexed by account_id; columns `arr`, `seats`, `active` (bool). Accounts whose first change is after
    `day` are absent; a churned account has ARR 0 and `active` False.
    """
    cutoff = pd.Timestamp(day)
    past = events.loc[events["day"] <= cutoff]
    last = past.groupby("account_id", sort=True).last()
    out = pd.DataFrame({
        "arr": last["arr_after"].astype(float),
        "seats": last["seats_after"].astype("int64"),
        "active": (last["kind"] != "churn").to_numpy(dtype=bool),
    }, index=last.index)
    out.loc[~out["active"], "arr"] = 0.0
    return out


def states_at(events: pd.DataFrame, days: Sequence[date | pd.Timestamp]) -> dict[pd.Timestamp, pd.DataFrame]:
    """`state_at` for several days."""
    return {pd.Timestamp(d): state_at(events, d) for d in days}
