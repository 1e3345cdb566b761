"""The signals frame: one row of facts per account on a given day, built with a few SQL aggregates.

Health scoring, stage rules and the churn model all read this frame, so it is computed for the whole
portfolio at once: one GROUP BY pass over the account-total usage rows of the 60-day window (as three range reads
of the covering index `ix_usage_cover`: the last 7 days, the 23 days before them, and the 30 days before the last
30), small aggregates for activation (the short window, with seats), feature breadth (only when per-feature rows
exist), tickets, the latest NPS answer and each respondent's latest answer of the last 90 days, the latest note,
and per-account index lookups (last login, last usage day, whether per-feature rows exist); everything is merged
in pandas. At 100,000 accounts × 90 days the reads are about the cost of the bare
SQL aggregate over the same rows (see `python -m bench`).

Only data at or before `as_of` is read, so the frame of a past day never sees the future (the churn model
relies on this). Date bounds are computed in Python and bound as parameters, which keeps the SQL portable
between SQLite and PostgreSQL; datetime columns are compared with day bounds (`created_at < :next_day`), which
works whatever the stored time-of-day precision is.

Column conventions: counts are floats (NaN only where documented), date and datetime columns are naive
`datetime64` (NaT when unknown), `days_*` columns are floats in whole days.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, timedelta
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Date, Float, bindparam, text
from sqlmodel import Session

from lifecycle.scoring import rollups

USAGE_WINDOW_DAYS = 30
# The recent window: licence utilisation and the short usage trend read the last week, so a collapse shows within
# days rather than after the 30-day window has forgotten the good days before it.
RECENT_DAYS = 7
# NPS answers this recent count as "the customer's current opinion" for the detractor signal.
NPS_RECENT_DAYS = 90
# Days since the last login for an account with usage data but no login in the 60-day window (a lower bound).
NO_LOGIN_IN_WINDOW = 2 * USAGE_WINDOW_DAYS + 1

ACCOUNT_COLUMNS = [
    "external_id", "name", "owner_id", "segment", "plan", "arr", "seats", "status", "stage", "stage_pinned",
    "stage_since", "contract_start", "renewal_date",
]
USAGE_COLUMNS = [
    "active_users_peak_30", "active_users_peak_7", "utilisation", "events_30", "events_prior_30", "events_7",
    "events_per_day_7", "events_per_day_8_30", "usage_change_7", "usage_change_30", "usage_change", "logins_30",
    "logins_prior_30", "usage_days_30", "usage_days_7", "last_login_date", "last_usage_date", "activation_days",
    "feature_breadth_30",
]
TICKET_COLUMNS = ["open_high_tickets", "urgent_open_tickets", "tickets_30", "tickets_prior_30"]
# Derived day counts, added to the contract's columns so that scoring needs no `as_of`.
DERIVED_COLUMNS = [
    "days_since_contract_start", "days_to_renewal", "days_since_last_login", "days_since_last_usage",
    "days_since_last_note", "days_since_last_nps",
]
SIGNAL_COLUMNS: tuple[str, ...] = (
    *ACCOUNT_COLUMNS, *USAGE_COLUMNS, *TICKET_COLUMNS, "nps_last_score", "nps_last_at", "nps_detractors_90",
    "last_note_at",
    *DERIVED_COLUMNS, "health_score", "health_grade",
)

# Usage is read from the covering index (account, feature, day, active users, logins, events): each account's
# rows of a window are one contiguous range of it, so the aggregate never touches the table. `CROSS JOIN` is
# SQLite's way of fixing the join order (accounts outside, usage inside): without it the planner, which has no
# statistics, prefers the index on `day` and then visits the table row by row, several times slower. PostgreSQL
# reads it as a plain inner join and plans as it likes.
_ACCOUNTS_SQL = (
    """
    SELECT a.id AS account_id, a.external_id, a.name, a.owner_id, a.segment, a."plan" AS plan, a.arr, a.seats,
           a.status, a.stage, a.stage_pinned, a.stage_since, a.contract_start, a.renewal_date,
           a.health_score, a.health_grade,
           CASE WHEN a.last_usage_date <= :as_of THEN a.last_usage_date
                ELSE (SELECT MAX(u.day) FROM usage_daily u
                       WHERE u.account_id = a.id AND u.feature = '' AND u.day <= :as_of)
           END AS usage_max_day{usage_lookups}
    FROM account a WHERE 1 = 1 {scope}
    """
)
# The last login and whether per-feature rows exist, read from the raw rows (the roll-ups carry both).
_RAW_LOOKUPS = """,
           (SELECT l.day FROM usage_daily l
             WHERE l.account_id = a.id AND l.feature = '' AND l.day >= :d60 AND l.day <= :as_of AND l.logins > 0
             ORDER BY l.day DESC LIMIT 1) AS last_login_date,
           CASE WHEN EXISTS (SELECT 1 FROM usage_daily f
                              WHERE f.account_id = a.id AND f.feature > '' AND f.day <= :as_of)
                THEN 1 ELSE 0 END AS has_feature_rows"""

# One window of account-total usage. The windows are separate range reads rather than one read with a CASE per
# aggregate: plain aggregates cost SQLite about half as much per row, which is what dominates on millions of rows.
_USAGE_SQL = (
    """
    SELECT a.id AS account_id, MAX(u.active_users) AS active_users_peak, SUM(u.events) AS events,
           SUM(u.logins) AS logins, COUNT(*) AS usage_days
    FROM account a CROSS JOIN usage_daily u
    WHERE u.account_id = a.id AND u.feature = '' AND u.day >= :start AND u.day <= :end {scope}
    GROUP BY a.id
    """
)

# Activation needs seats, hence the account side of the join; it reads only the short activation window.
_ACTIVATION_SQL = (
    """
    SELECT a.id AS account_id,
      SUM(CASE WHEN u.active_users >= :ratio * a.seats THEN 1 ELSE 0 END) AS activation_days
    FROM account a CROSS JOIN usage_daily u
    WHERE u.account_id = a.id AND u.feature = '' AND u.day >= :dact AND u.day <= :as_of AND a.seats > 0 {scope}
    GROUP BY a.id
    """
)

_FEATURES_SQL = (
    """
    SELECT a.id AS account_id, COUNT(DISTINCT u.feature) AS feature_breadth_30
    FROM account a CROSS JOIN usage_daily u
    WHERE u.account_id = a.id AND u.feature > '' AND u.day >= :d30 AND u.day <= :as_of AND u.events > 0 {scope}
    GROUP BY a.id
    """
)

# A ticket counts as open on `as_of` if it was opened by then and not closed by then; one marked closed
# without a closing time is taken as closed.
_TICKETS_SQL = (
    """
    SELECT t.account_id AS account_id,
      SUM(CASE WHEN LOWER(t.priority) IN ('high', 'urgent') AND (
                 (t.closed_at IS NULL AND LOWER(t.status) <> 'closed') OR t.closed_at >= :next_day)
               THEN 1 ELSE 0 END) AS open_high_tickets,
      SUM(CASE WHEN LOWER(t.priority) = 'urgent' AND (
                 (t.closed_at IS NULL AND LOWER(t.status) <> 'closed') OR t.closed_at >= :next_day)
               THEN 1 ELSE 0 END) AS urgent_open_tickets,
      SUM(CASE WHEN t.opened_at >= :d30 THEN 1 ELSE 0 END) AS tickets_30,
      SUM(CASE WHEN t.opened_at >= :d60 AND t.opened_at < :d30 THEN 1 ELSE 0 END) AS tickets_prior_30
    FROM ticket t
    WHERE t.opened_at < :next_day {scope_t}
    GROUP BY t.account_id
    """
)

_NPS_SQL = (
    """
    SELECT r.account_id AS account_id, r.id AS response_id, r.score AS nps_last_score,
           r.responded_at AS nps_last_at
    FROM nps_response r
    JOIN (SELECT account_id, MAX(responded_at) AS last_at FROM nps_response
           WHERE responded_at < :next_day {scope_r} GROUP BY account_id) m
      ON m.account_id = r.account_id AND m.last_at = r.responded_at
    """
)

# Each respondent's latest answer of the recent window (anonymous answers, contact_key "", count as one
# respondent): a detractor who answered again more happily no longer counts, one who did not still does.
_NPS_RECENT_SQL = (
    """
    SELECT r.account_id AS account_id,
      SUM(CASE WHEN r.score <= 6 THEN 1 ELSE 0 END) AS nps_detractors_90
    FROM nps_response r
    JOIN (SELECT account_id, contact_key, MAX(responded_at) AS last_at FROM nps_response
           WHERE responded_at >= :d90 AND responded_at < :next_day {scope_r}
           GROUP BY account_id, contact_key) m
      ON m.account_id = r.account_id AND m.contact_key = r.contact_key AND m.last_at = r.responded_at
    GROUP BY r.account_id
    """
)

_NOTES_SQL = (
    """
    SELECT n.account_id AS account_id, MAX(n.created_at) AS last_note_at
    FROM note n WHERE n.created_at < :next_day {scope_n} GROUP BY n.account_id
    """
)


def _frame(session: Session, stmt: Any, params: dict[str, Any]) -> pd.DataFrame:
    """Run a query into a DataFrame straight from the driver's tuples.

    These statements declare no result types, so SQLAlchemy's Row objects would add nothing but their cost
    (about half the time of the accounts query); `from_records` builds the columns in C.
    """
    result = session.execute(stmt, params)
    names = list(result.keys())
    rows = result.cursor.fetchall()  # type: ignore[attr-defined]
    result.close()
    return pd.DataFrame.from_records(rows, columns=names)


def _naive_datetimes(values: pd.Series) -> pd.Series:
    """Dates and datetimes as naive UTC `datetime64`, whatever the driver gave (strings, objects, aware)."""
    if values.empty:
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    converted = values
    if not pd.api.types.is_datetime64_any_dtype(values):
        converted = pd.to_datetime(values, format="ISO8601", utc=True)
    if isinstance(converted.dtype, pd.DatetimeTZDtype):
        converted = converted.dt.tz_convert("UTC").dt.tz_localize(None)
    return pd.Series(converted, index=values.index).astype("datetime64[ns]")


def _days(later: pd.Series | pd.Timestamp, earlier: pd.Series | pd.Timestamp) -> pd.Series:
    """Whole calendar days from `earlier` to `later` as floats (NaN where either is unknown)."""
    end = later.dt.normalize() if isinstance(later, pd.Series) else later.normalize()
    start = earlier.dt.normalize() if isinstance(earlier, pd.Series) else earlier.normalize()
    return pd.Series((end - start) / pd.Timedelta(days=1)).astype(float)


SCOPE_TABLE = "csbot_scope"  # the account ids a scoped frame covers (a temporary table of the session)
_DATE_PARAMS = ("as_of", "d60", "start", "end", "dact", "d30", "d90", "next_day")


@lru_cache(maxsize=64)
def _statement(template: str, scoped: bool, lookups: str = "") -> Any:
    """A query of this module, limited to the accounts of `SCOPE_TABLE` when `scoped`."""
    def within(column: str) -> str:
        return f" AND {column} IN (SELECT id FROM {SCOPE_TABLE})" if scoped else ""

    sql = template.format(usage_lookups=lookups, scope=within("a.id"), scope_t=within("t.account_id"),
                          scope_r=within("account_id"), scope_n=within("n.account_id"))
    params: list[Any] = [bindparam(name, type_=Date()) for name in _DATE_PARAMS if re.search(rf":{name}\b", sql)]
    if ":ratio" in sql:
        params.append(bindparam("ratio", type_=Float()))
    return text(sql).bindparams(*params)


def set_scope(session: Session, accounts: Iterable[int]) -> int:
    """Fill the session's scope table with `accounts` (for the scoped reads here and in the recompute)."""
    conn = session.connection()
    conn.exec_driver_sql(f"CREATE TEMPORARY TABLE IF NOT EXISTS {SCOPE_TABLE} (id BIGINT PRIMARY KEY)")
    conn.exec_driver_sql(f"DELETE FROM {SCOPE_TABLE}")
    ids = sorted({int(a) for a in accounts})
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    for start in range(0, len(ids), 10_000):
        conn.exec_driver_sql(f"INSERT INTO {SCOPE_TABLE} (id) VALUES ({mark})",
                             [(a,) for a in ids[start:start + 10_000]])
    return len(ids)


def build_signals(
    session: Session, as_of: date, *, activation_ratio: float = 0.6, activation_window: int = 14,
    accounts: Iterable[int] | None = None, source: str = "auto",
) -> pd.DataFrame:
    """One row per account (active and churned) of the facts known on `as_of`; index `account_id`.

    Windows end at `as_of` inclusive: "last 30 days" is `as_of - 29 … as_of`, "prior 30" is `as_of - 59 …
    as_of - 30`, "last 7 days" is `as_of - 6 … as_of` and "days 8–30" the 23 days before it. `activation_days`
    counts days of the last `activation_window` whose active users reached `activation_ratio × seats` (NaN when
    seats is 0). See the module docstring for column conventions, `_usage_columns` for the usage ones.

    `accounts` limits the frame to those account ids (the incremental recompute, shards); `source` says where
    the account-total usage comes from: "rollups" (`lifecycle.scoring.rollups`, one row per account), "raw" (the
    `usage_daily` rows) or "auto" (the roll-ups when they reach back far enough for `as_of`, else the raw rows).
    Both give the same frame.
    """
    d7 = as_of - timedelta(days=RECENT_DAYS - 1)
    d30 = as_of - timedelta(days=USAGE_WINDOW_DAYS - 1)
    d60 = as_of - timedelta(days=2 * USAGE_WINDOW_DAYS - 1)
    d90 = as_of - timedelta(days=NPS_RECENT_DAYS - 1)
    dact = as_of - timedelta(days=max(activation_window, 1) - 1)
    next_day = as_of + timedelta(days=1)
    as_of_ts = pd.Timestamp(as_of)
    scoped = accounts is not None
    if accounts is not None:
        set_scope(session, accounts)

    stored = None
    if source != "raw":
        stored = _rollups_for(session, as_of, min(d60, dact), scoped)
        if stored is None and source == "rollups":
            raise ValueError(f"the usage roll-ups do not reach back to {min(d60, dact)}")
    if stored is not None:
        accounts_frame = _frame(session, _statement(_ACCOUNTS_SQL, scoped), {"as_of": as_of})
        week, rest, prior, activation, lookups = _usage_from_rollups(
            stored, accounts_frame, as_of, activation_ratio, max(activation_window, 1))
        accounts_frame = accounts_frame.merge(lookups, on="account_id", how="left")
        accounts_frame["has_feature_rows"] = accounts_frame["has_feature_rows"].fillna(0).astype("int64")
        queries: list[tuple[Any, dict[str, Any]]] = [
            (_statement(_TICKETS_SQL, scoped), {"d30": d30, "d60": d60, "next_day": next_day}),
            (_statement(_NOTES_SQL, scoped), {"next_day": next_day}),
            (_statement(_NPS_SQL, scoped), {"next_day": next_day}),
            (_statement(_NPS_RECENT_SQL, scoped), {"d90": d90, "next_day": next_day}),
        ]
        tickets, notes, nps, nps_recent = (_frame(session, q, p) for q, p in queries)
    else:
        queries = [
            (_statement(_USAGE_SQL, scoped), {"start": d7, "end": as_of}),
            (_statement(_USAGE_SQL, scoped), {"start": d30, "end": d7 - timedelta(days=1)}),
            (_statement(_ACCOUNTS_SQL, scoped, _RAW_LOOKUPS), {"as_of": as_of, "d60": d60}),
            (_statement(_USAGE_SQL, scoped), {"start": d60, "end": d30 - timedelta(days=1)}),
            (_statement(_ACTIVATION_SQL, scoped), {"dact": dact, "as_of": as_of, "ratio": activation_ratio}),
            (_statement(_TICKETS_SQL, scoped), {"d30": d30, "d60": d60, "next_day": next_day}),
            (_statement(_NOTES_SQL, scoped), {"next_day": next_day}),
            (_statement(_NPS_SQL, scoped), {"next_day": next_day}),
            (_statement(_NPS_RECENT_SQL, scoped), {"d90": d90, "next_day": next_day}),
        ]
        week, rest, accounts_frame, prior, activation, tickets, notes, nps, nps_recent = (
            _frame(session, q, p) for q, p in queries
        )
    usage = (
        week.set_index("account_id").add_suffix("_7")
        .join(rest.set_index("account_id").add_suffix("_8_30"), how="outer")
        .join(prior.set_index("account_id").add_suffix("_prior_30"), how="outer")
    )
    # Per-feature rows are optional (large portfolios often send only account totals): skip the read when
    # no account has any.
    if accounts_frame["has_feature_rows"].astype(bool).any():
        features = _frame(session, _statement(_FEATURES_SQL, scoped), {"d30": d30, "as_of": as_of})
    else:
        features = pd.DataFrame({"account_id": pd.Series(dtype="int64"),
                                 "feature_breadth_30": pd.Series(dtype=float)})

    # Two answers at the same instant: the one recorded last wins.
    nps = nps.sort_values("response_id").drop_duplicates("account_id", keep="last")
    nps = nps.drop(columns="response_id")

    frame = accounts_frame.set_index("account_id")
    frame.index = frame.index.astype("int64")
    frame = frame.join(usage, how="left")
    for part in (activation, features, tickets, nps, nps_recent, notes):
        frame = frame.join(part.set_index("account_id"), how="left")

    frame["arr"] = frame["arr"].astype(float)
    frame["seats"] = frame["seats"].fillna(0).astype("int64")
    frame = _usage_columns(frame)
    frame["stage_pinned"] = frame["stage_pinned"].fillna(False).astype(bool)
    for column in ("stage_since", "contract_start", "renewal_date", "usage_max_day", "last_login_date",
                   "nps_last_at", "last_note_at"):
        frame[column] = _naive_datetimes(frame[column])
    for column in ("activation_days", "nps_detractors_90", *TICKET_COLUMNS):
        frame[column] = frame[column].astype(float).fillna(0.0)
    frame["nps_last_score"] = frame["nps_last_score"].astype(float)
    frame["activation_days"] = frame["activation_days"].where(frame["seats"] > 0)

    breadth = frame["feature_breadth_30"].astype(float).fillna(0.0)
    frame["feature_breadth_30"] = breadth.where(frame["has_feature_rows"].astype(bool))

    # `Account.last_usage_date` is the importers' cache of the newest usage day; the SQL takes it when it is not
    # after `as_of` and looks the day up in the index otherwise (a past day replayed, or no cache yet).
    frame["last_usage_date"] = frame["usage_max_day"]

    frame["days_since_contract_start"] = _days(as_of_ts, frame["contract_start"])
    frame["days_to_renewal"] = _days(frame["renewal_date"], as_of_ts)
    frame["days_since_last_usage"] = _days(as_of_ts, frame["last_usage_date"])
    since_login = _days(as_of_ts, frame["last_login_date"])
    no_login = since_login.isna() & frame["days_since_last_usage"].notna()
    frame["days_since_last_login"] = since_login.where(
        ~no_login, np.maximum(float(NO_LOGIN_IN_WINDOW), frame["days_since_last_usage"])
    )
    frame["days_since_last_note"] = _days(as_of_ts, frame["last_note_at"])
    frame["days_since_last_nps"] = _days(as_of_ts, frame["nps_last_at"])
    frame["health_score"] = frame["health_score"].astype(float)

    frame.index.name = "account_id"
    frame.attrs["as_of"] = as_of
    return frame[list(SIGNAL_COLUMNS)].sort_index()


def _rollups_for(session: Session, as_of: date, earliest: date, scoped: bool) -> pd.DataFrame | None:
    """The roll-up rows of the frame's accounts, or None when some roll-up does not reach back to `earliest`
    (a day replayed further back than `ROLLUP_DAYS` before the account's newest usage)."""
    scope = f"r.account_id IN (SELECT id FROM {SCOPE_TABLE})" if scoped else ""
    stored = rollups.read(session.connection(), scope_sql=scope)
    first_slot = stored["end_day"].to_numpy(dtype=float) - (rollups.ROLLUP_DAYS - 1)
    lowest = float((earliest - rollups.day_of(0)).days)
    if np.any(first_slot > lowest):
        return None
    return stored


def _usage_from_rollups(
    stored: pd.DataFrame, accounts: pd.DataFrame, as_of: date, ratio: float, window: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The three usage windows, activation, last login and per-feature flag from the roll-ups, in the shape of
    the raw queries' results (an account appears in a window's frame only if it has a row in that window)."""
    ids = stored["account_id"].to_numpy(dtype=np.int64)
    users, logins, events = rollups.decode(stored["days"].tolist())
    ends = stored["end_day"].to_numpy(dtype=float)
    days = ends[:, None] - (rollups.ROLLUP_DAYS - 1) + np.arange(rollups.ROLLUP_DAYS)[None, :]
    present = users >= 0
    today = float((as_of - rollups.day_of(0)).days)

    def inside(first: float, last: float) -> np.ndarray:
        return present & (days >= first) & (days <= last)

    def usage_window(first: float, last: float) -> pd.DataFrame:
        hit = inside(first, last)
        count = hit.sum(axis=1)
        keep = count > 0
        return pd.DataFrame({
            "account_id": ids[keep],
            "active_users_peak": np.where(hit, users, -1).max(axis=1, initial=-1)[keep],
            "events": np.where(hit, events, 0).sum(axis=1)[keep],
            "logins": np.where(hit, logins, 0).sum(axis=1)[keep],
            "usage_days": count[keep],
        })

    week = usage_window(today - (RECENT_DAYS - 1), today)
    rest = usage_window(today - (USAGE_WINDOW_DAYS - 1), today - RECENT_DAYS)
    prior = usage_window(today - (2 * USAGE_WINDOW_DAYS - 1), today - USAGE_WINDOW_DAYS)

    seats = accounts.set_index("account_id")["seats"].reindex(ids).fillna(0).to_numpy(dtype=float)
    hit = inside(today - (window - 1), today) & (seats[:, None] > 0)
    keep = hit.any(axis=1)
    reached = (hit & (users.astype(float) >= ratio * seats[:, None])).sum(axis=1)
    activation = pd.DataFrame({"account_id": ids[keep], "activation_days": reached[keep]})

    login = inside(today - (2 * USAGE_WINDOW_DAYS - 1), today) & (logins > 0)
    newest = np.where(login, days, -np.inf).max(axis=1, initial=-np.inf)
    newest = np.where(np.isfinite(newest), newest, np.nan)
    lookups = pd.DataFrame({
        "account_id": ids,
        "last_login_date": pd.Timestamp(rollups.day_of(0)) + pd.to_timedelta(newest, unit="D"),
        "has_feature_rows": (stored["first_feature_day"].to_numpy(dtype=float) <= today).astype("int64"),
    })
    return week, rest, prior, activation, lookups


def _change(current: pd.Series, baseline: pd.Series) -> pd.Series:
    """% change of `current` against `baseline`; NaN where the baseline is 0 or unknown."""
    with np.errstate(divide="ignore", invalid="ignore"):
        change = (current - baseline) / baseline * 100.0
    return change.where(baseline > 0)


def _usage_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """The usage columns from the three window reads (suffixes `_7`, `_8_30`, `_prior_30`), in place.

    - `utilisation`: the most daily active users on one day of the last 7 days ÷ seats (NaN without seats or
      without usage rows in the last 30 days; 0 when the last 7 days have none). A week's peak is steady across
      weekends and a day not imported yet, and forgets a collapse's good days after a week, not a month.
    - `events_per_day_7`, `events_per_day_8_30`: events per day with a usage row, in the last 7 days and in the
      23 days before (rows missing at the edge, such as today's, do not count as zero days); the first is 0 when
      the last 7 days have no row but the 23 days before do.
    - `usage_change_7`: % change of the first against the second, the short usage trend (NaN without a baseline);
      `usage_change_30`: % change of the events of the last 30 days against the 30 before; `usage_change`: the
      lower of the two, so a collapse shows from its first week (short trend) until it has filled the whole
      month (30-day trend), and a slow slide shows too.
    """
    zero = ["events_7", "events_8_30", "events_prior_30", "logins_7", "logins_8_30", "logins_prior_30",
            "usage_days_7", "usage_days_8_30"]
    for column in zero:
        frame[column] = frame[column].astype(float).fillna(0.0)
    frame["events_30"] = frame["events_7"] + frame["events_8_30"]
    frame["logins_30"] = frame["logins_7"] + frame["logins_8_30"]
    frame["usage_days_30"] = frame["usage_days_7"] + frame["usage_days_8_30"]
    peak_7 = frame["active_users_peak_7"].astype(float)
    frame["active_users_peak_30"] = np.fmax(peak_7, frame["active_users_peak_8_30"].astype(float))

    seats = frame["seats"].to_numpy(dtype=float)
    has_usage_30 = frame["usage_days_30"].to_numpy() > 0
    frame["active_users_peak_7"] = peak_7.where(~(peak_7.isna() & has_usage_30), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        utilisation = frame["active_users_peak_7"].to_numpy() / seats
    frame["utilisation"] = np.where((seats > 0) & has_usage_30, utilisation, np.nan)

    days_7, days_rest = frame["usage_days_7"], frame["usage_days_8_30"]
    frame["events_per_day_8_30"] = (frame["events_8_30"] / days_rest).where(days_rest > 0)
    frame["events_per_day_7"] = (frame["events_7"] / days_7).where(days_7 > 0, 0.0).where(has_usage_30)
    frame["usage_change_7"] = _change(frame["events_per_day_7"], frame["events_per_day_8_30"])
    frame["usage_change_30"] = _change(frame["events_30"], frame["events_prior_30"])
    frame["usage_change"] = np.fmin(frame["usage_change_7"], frame["usage_change_30"])
    return frame


_STAGES_SQL = text("SELECT a.id AS account_id, a.stage, a.stage_pinned, a.stage_since FROM account a")


def refresh_stages(session: Session, frame: pd.DataFrame) -> None:
    """Re-read stage, pin and stage start of the frame's accounts after stage moves (in place), so that the frame
    says what `build_signals` would say now, without reading the usage again."""
    current = _frame(session, _STAGES_SQL, {}).set_index("account_id")
    current.index = current.index.astype("int64")
    current = current.reindex(frame.index)
    known = current["stage"].notna().to_numpy()
    frame["stage"] = frame["stage"].where(~known, current["stage"])
    frame["stage_pinned"] = frame["stage_pinned"].where(~known, current["stage_pinned"].fillna(False).astype(bool))
    frame["stage_since"] = frame["stage_since"].where(~known, _naive_datetimes(current["stage_since"]))
