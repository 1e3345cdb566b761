"""Usage roll-ups: each account's recent account-total usage packed into one row, and the marks of changed accounts.

`usage_daily` stays the source of truth. `usage_rollup` holds, per account, the last `ROLLUP_DAYS` days of its
account-total rows (feature "") as three packed little-endian arrays in one blob — active users (int32, -1 where
the day has no row), logins (int32) and events (int64) — whose last slot is `end_day`, the newest day with a row,
plus `first_feature_day`, the oldest per-feature row (whether the account has per-feature data on a day). Any
window of up to `ROLLUP_DAYS` days ending on or after `end_day - (ROLLUP_DAYS - 1 - window)` can be aggregated
from it exactly, which is what the signals frame's 60-day windows need (see `lifecycle.scoring.signals`): the nightly
run reads one row per account instead of 60, and NumPy aggregates the windows. A day replayed further back than the
roll-up reaches (the health backfill of new accounts) reads the raw rows instead.

The roll-ups are kept in step in the transaction that writes the usage:
- the CSV import and the ingest API call `apply_usage` with the rows they just wrote (stored values, or added
  counts for the ingest's increments); an account without a roll-up row yet is rolled up from its raw rows;
- ORM writes of `UsageDaily` objects refresh their accounts from the raw rows after the flush
(`lifecycle.store.models`);
- anything else that writes `usage_daily` directly (a one-off SQL fix) must call `refresh_accounts` for the
  accounts it touched, or `csbot rebuild-rollups` afterwards.
`rebuild` recomputes every roll-up from the raw rows (migration 0011 runs it once); tests prove that a history
applied batch by batch gives the same rows as a rebuild.

Change marks: `account_change` lists the accounts whose recompute inputs changed since a recompute last covered
them (tickets, notes, NPS and account fields through database triggers; usage through `apply_usage`), which is
what the incremental recompute reads (`lifecycle.recompute`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection
from sqlmodel import Session

# 60 days of windows plus four days of slack, so that a recompute of a day a little before the newest usage day
# (usage already in for today, scored as of yesterday) still reads the roll-up.
ROLLUP_DAYS = 64
ABSENT = -1  # active users of a day without a row
_USERS_BYTES, _LOGINS_BYTES, _EVENTS_BYTES = 4 * ROLLUP_DAYS, 4 * ROLLUP_DAYS, 8 * ROLLUP_DAYS
ROW_BYTES = _USERS_BYTES + _LOGINS_BYTES + _EVENTS_BYTES
_CHUNK = 5_000  # ids per IN list and rows per executemany batch
_EPOCH = date(1970, 1, 1)


# ---------------------------------------------------------------------------------------------- the packing


def empty(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` rows of no usage: users, logins and events matrices of shape (n, ROLLUP_DAYS)."""
    return (np.full((n, ROLLUP_DAYS), ABSENT, dtype=np.int32), np.zeros((n, ROLLUP_DAYS), dtype=np.int32),
            np.zeros((n, ROLLUP_DAYS), dtype=np.int64))


def encode(users: np.ndarray, logins: np.ndarray, events: np.ndarray) -> list[bytes]:
    """One blob per row of the three (n, ROLLUP_DAYS) matrices."""
    packed = np.concatenate([
        np.ascontiguousarray(users, dtype="<i4").view(np.uint8),
        np.ascontiguousarray(logins, dtype="<i4").view(np.uint8),
        np.ascontiguousarray(events, dtype="<i8").view(np.uint8),
    ], axis=1)
    return [row.tobytes() for row in packed]


def decode(blobs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (n, ROLLUP_DAYS) users, logins and events matrices of `n` blobs (one buffer, no per-row parsing)."""
    if not blobs:
        return empty(0)
    raw = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), ROW_BYTES)
    users = raw[:, :_USERS_BYTES].copy().view("<i4").astype(np.int32)
    logins = raw[:, _USERS_BYTES:_USERS_BYTES + _LOGINS_BYTES].copy().view("<i4").astype(np.int32)
    events = raw[:, _USERS_BYTES + _LOGINS_BYTES:].copy().view("<i8").astype(np.int64)
    return users, logins, events


def day_numbers(values: Iterable[Any]) -> np.ndarray:
    """Days since 1970-01-01 as floats (NaN where unknown), from dates, datetimes or ISO text."""
    series = pd.Series(list(values), dtype=object)
    if series.empty:
        return np.empty(0, dtype=float)
    stamps = pd.to_datetime(series, format="ISO8601")
    out = (stamps.dt.normalize() - pd.Timestamp(_EPOCH)) / pd.Timedelta(days=1)
    return out.to_numpy(dtype=float)


def day_of(number: float) -> date:
    return _EPOCH + timedelta(days=int(number))


# ------------------------------------------------------------------------------------------------- reading


def _id_chunks(ids: Iterable[int]) -> list[str]:
    ordered = sorted({int(i) for i in ids})
    return [",".join(map(str, ordered[i:i + _CHUNK])) for i in range(0, len(ordered), _CHUNK)]


def read(conn: Connection, accounts: Iterable[int] | None = None, *, scope_sql: str = "") -> pd.DataFrame:
    """Roll-up rows (all, those of `accounts`, or those matching `scope_sql`, a condition on `r.account_id`):
    columns account_id, end_day and first_feature_day (day numbers, NaN when none) and days (the blob)."""
    base = "SELECT r.account_id, r.end_day, r.first_feature_day, r.days FROM usage_rollup r"
    if accounts is None:
        queries = [base + (f" WHERE {scope_sql}" if scope_sql else "")]
    else:
        queries = [f"{base} WHERE r.account_id IN ({chunk})" for chunk in _id_chunks(accounts)]
    rows: list[Any] = []
    for query in queries:
        result = conn.exec_driver_sql(query)
        rows.extend(result.cursor.fetchall())  # plain driver tuples: Row objects cost more than the read
        result.close()
    frame = pd.DataFrame.from_records(rows, columns=["account_id", "end_day", "first_feature_day", "days"])
    frame["account_id"] = frame["account_id"].astype("int64")
    frame["end_day"] = day_numbers(frame["end_day"])
    frame["first_feature_day"] = day_numbers(frame["first_feature_day"])
    return frame


# ------------------------------------------------------------------------------------------------- writing


def _write(conn: Connection, ids: np.ndarray, end_days: np.ndarray, feature_days: np.ndarray,
           blobs: Sequence[bytes]) -> None:
    sqlite = conn.dialect.name == "sqlite"
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"

    def as_day(number: float) -> Any:
        if np.isnan(number):
            return None
        day = day_of(number)
        return day.isoformat() if sqlite else day

    statement = (
        "INSERT INTO usage_rollup (account_id, end_day, first_feature_day, days) "
        f"VALUES ({mark}, {mark}, {mark}, {mark}) ON CONFLICT (account_id) DO UPDATE SET "
        "end_day = excluded.end_day, first_feature_day = excluded.first_feature_day, days = excluded.days"
    )
    params = [(int(a), as_day(e), as_day(f), b)
              for a, e, f, b in zip(ids.tolist(), end_days.tolist(), feature_days.tolist(), blobs, strict=True)]
    for start in range(0, len(params), _CHUNK):
        conn.exec_driver_sql(statement, params[start:start + _CHUNK])


def mark_changed(conn: Connection, accounts: Iterable[int]) -> None:
    """Mark accounts as changed for the incremental recompute (a new mark, or the version of one raised)."""
    ids = sorted({int(a) for a in accounts})
    if not ids:
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    statement = (f"INSERT INTO account_change (account_id, version) VALUES ({mark}, 1) ON CONFLICT (account_id) "
                 "DO UPDATE SET version = account_change.version + 1")
    for start in range(0, len(ids), _CHUNK):
        conn.exec_driver_sql(statement, [(a,) for a in ids[start:start + _CHUNK]])


def _start_of_ring(dialect: str) -> str:
    """SQL for the first day of the ring that ends on `m.end_day`."""
    if dialect == "sqlite":
        return f"date(m.end_day, '-{ROLLUP_DAYS - 1} days')"
    return f"m.end_day - {ROLLUP_DAYS - 1}"


def _from_raw(conn: Connection, condition: str) -> int:
    """Roll up the raw rows of the accounts matching `condition` (on `account_id`, or "" for every account) and
    upsert their rows; returns how many accounts got a row."""
    where = f" AND {condition}" if condition else ""
    totals = conn.exec_driver_sql(
        "SELECT u.account_id, u.day, u.active_users, u.logins, u.events FROM usage_daily u "
        f"JOIN (SELECT account_id, MAX(day) AS end_day FROM usage_daily WHERE feature = ''{where} "
        "GROUP BY account_id) m ON m.account_id = u.account_id "
        f"WHERE u.feature = '' AND u.day >= {_start_of_ring(conn.dialect.name)}"
    ).fetchall()
    features = conn.exec_driver_sql(
        f"SELECT account_id, MIN(day) FROM usage_daily WHERE feature > ''{where} GROUP BY account_id"
    ).fetchall()
    rows = pd.DataFrame.from_records(totals, columns=["account_id", "day", "active_users", "logins", "events"])
    first = pd.DataFrame.from_records(features, columns=["account_id", "first_feature_day"])
    ids = np.union1d(rows["account_id"].to_numpy(dtype=np.int64), first["account_id"].to_numpy(dtype=np.int64))
    if not len(ids):
        return 0
    day = day_numbers(rows["day"])
    acct = rows["account_id"].to_numpy(dtype=np.int64)
    ends = pd.Series(day).groupby(acct).max().reindex(ids).to_numpy(dtype=float)
    users, logins, events = empty(len(ids))
    if len(rows):
        at = np.searchsorted(ids, acct)
        slot = (day - ends[at] + ROLLUP_DAYS - 1).astype(np.int64)
        users[at, slot] = rows["active_users"].to_numpy(dtype=np.int64)
        logins[at, slot] = rows["logins"].to_numpy(dtype=np.int64)
        events[at, slot] = rows["events"].to_numpy(dtype=np.int64)
    feature_days = np.full(len(ids), np.nan)
    if len(first):
        feature_days[np.searchsorted(ids, first["account_id"].to_numpy(dtype=np.int64))] = day_numbers(
            first["first_feature_day"])
    _write(conn, ids, ends, feature_days, encode(users, logins, events))
    return len(ids)


def rebuild(conn: Connection) -> int:
    """Recompute every roll-up from the raw usage rows (`csbot rebuild-rollups`, migration 0011); returns the
    number of accounts with a roll-up row. Marks nothing: the next full recompute reads them anyway."""
    conn.exec_driver_sql("DELETE FROM usage_rollup")
    return _from_raw(conn, "")


def refresh_accounts(conn: Connection, accounts: Iterable[int], *, mark: bool = True) -> int:
    """Recompute the roll-ups of `accounts` from their raw rows (after writes that bypassed `apply_usage`)."""
    ids = sorted({int(a) for a in accounts})
    written = 0
    for chunk in _id_chunks(ids):
        conn.exec_driver_sql(f"DELETE FROM usage_rollup WHERE account_id IN ({chunk})")
        written += _from_raw(conn, f"account_id IN ({chunk})")
    if mark:
        mark_changed(conn, ids)
    return written


def apply_usage(session: Session | Connection, rows: pd.DataFrame | Sequence[Mapping[str, Any]], *,
                added: bool = False) -> int:
    """Bring the roll-ups of the accounts in `rows` up to date with the usage rows just written, and mark them
    changed; returns the number of accounts touched.

    `rows` has account_id, feature, day, active_users, logins and events: the values now stored (CSV import,
    `added=False`), or the counts just added to the stored ones (ingest API, `added=True`). Rows of one
    (account, feature, day) appear at most once. Accounts without a roll-up row yet are rolled up from their
    raw rows, which already hold the new ones.
    """
    conn = session.connection() if isinstance(session, Session) else session
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame.from_records(list(rows))
    if frame.empty:
        return 0
    acct = frame["account_id"].to_numpy(dtype=np.int64)
    ids = np.unique(acct)
    stored = read(conn, ids.tolist()).sort_values("account_id")
    known = stored["account_id"].to_numpy(dtype=np.int64)
    missing = np.setdiff1d(ids, known)
    if len(missing):
        refresh_accounts(conn, missing.tolist(), mark=False)
    if len(known):
        _merge(conn, stored, frame[np.isin(acct, known)], added)
    mark_changed(conn, ids.tolist())
    return len(ids)


def _merge(conn: Connection, stored: pd.DataFrame, frame: pd.DataFrame, added: bool) -> None:
    """Move each roll-up's ring to its newest day and put the new rows into their slots (vectorised)."""
    known = stored["account_id"].to_numpy(dtype=np.int64)
    users, logins, events = decode(stored["days"].tolist())
    old_end = stored["end_day"].to_numpy(dtype=float, copy=True)
    feature_days = stored["first_feature_day"].to_numpy(dtype=float, copy=True)

    day = day_numbers(frame["day"])
    at = np.searchsorted(known, frame["account_id"].to_numpy(dtype=np.int64))
    total = (frame["feature"].astype(str) == "").to_numpy()

    newest = pd.Series(day[total]).groupby(at[total]).max()
    new_end = old_end.copy()
    if len(newest):
        idx = newest.index.to_numpy()
        new_end[idx] = np.fmax(old_end[idx], newest.to_numpy())
    # Shift each ring left by the days its end moved; a ring without an end had no rows to keep.
    shift = np.where(np.isnan(old_end), ROLLUP_DAYS, np.nan_to_num(new_end - old_end)).astype(np.int64)
    if shift.any():
        source = np.arange(ROLLUP_DAYS)[None, :] + shift[:, None]
        keep = source < ROLLUP_DAYS
        source = np.minimum(source, ROLLUP_DAYS - 1)
        rows_ = np.arange(len(known))[:, None]
        users = np.where(keep, users[rows_, source], ABSENT).astype(np.int32)
        logins = np.where(keep, logins[rows_, source], 0).astype(np.int32)
        events = np.where(keep, events[rows_, source], 0).astype(np.int64)

    slot = day - new_end[at] + ROLLUP_DAYS - 1
    inside = total & (slot >= 0) & (slot < ROLLUP_DAYS)
    r, s = at[inside], slot[inside].astype(np.int64)
    new_users = frame["active_users"].to_numpy(dtype=np.int64)[inside]
    new_logins = frame["logins"].to_numpy(dtype=np.int64)[inside]
    new_events = frame["events"].to_numpy(dtype=np.int64)[inside]
    if added:
        users[r, s] = np.maximum(users[r, s], 0)
        np.add.at(users, (r, s), new_users.astype(np.int32))
        np.add.at(logins, (r, s), new_logins.astype(np.int32))
        np.add.at(events, (r, s), new_events)
    else:
        users[r, s], logins[r, s], events[r, s] = new_users, new_logins, new_events

    per_feature = ~total
    if per_feature.any():
        oldest = pd.Series(day[per_feature]).groupby(at[per_feature]).min()
        idx = oldest.index.to_numpy()
        feature_days[idx] = np.fmin(feature_days[idx], oldest.to_numpy())
    _write(conn, known, new_end, feature_days, encode(users, logins, events))
