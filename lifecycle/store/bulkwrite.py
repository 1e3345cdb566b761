"""Bulk writes close to the database's own speed: plain tuples through the driver, no ORM per row.

- `upsert_rows`: PostgreSQL streams the rows with COPY (psycopg's copy API) into a temporary staging table, then
  moves them with one `INSERT … SELECT … ON CONFLICT DO UPDATE`; SQLite runs one `executemany` of an
  `INSERT … ON CONFLICT DO UPDATE` on the raw sqlite3 cursor.
- `update_rows`: the rows go into a temporary staging table (COPY on PostgreSQL, executemany on SQLite), then one
  `UPDATE target SET … FROM staging WHERE target.key = staging.key` (SQLite ≥ 3.33; older SQLite runs one
  executemany `UPDATE … WHERE key = ?` instead).
- `insert_rows`: COPY straight into the table on PostgreSQL, executemany on SQLite.
- `delete_rows`: staging, then one `DELETE … USING staging` (PostgreSQL) / `DELETE … WHERE (keys) IN (SELECT … FROM
  staging)` (SQLite).

All of them run inside the caller's transaction (on the session's own connection) and never commit, so a failure
later in the same transaction still leaves nothing written. `bulk_mode` gives SQLite a larger page cache while a big
write runs (the default 2 MiB makes a big table's indexes spill on every page).

Values are given as Python values (int, str, float, date, datetime, bool, lists/dicts for JSON, None; NumPy scalars
too) and turned into what the column stores on each dialect by one function, `stored_values`: on SQLite, dates as
ISO text (`YYYY-MM-DD`) and datetimes as `YYYY-MM-DD HH:MM:SS.ffffff`, how SQLAlchemy stores them, so the ORM reads
the rows back unchanged; on both, NaN (and None) floats as NULL, booleans as the column's boolean, JSON values as
`json.dumps` text (a `str` given for a JSON column is taken as JSON text already encoded).
"""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Date, DateTime, Float, Integer, Numeric, Table
from sqlmodel import Session

# SQLite page cache while a bulk write runs (negative = KiB): the indexes of a table of millions of rows fit.
SQLITE_BULK_CACHE_KIB = 262_144
# UPDATE … FROM appeared in SQLite 3.33.0.
SQLITE_UPDATE_FROM = (3, 33, 0)
_STAGE_PREFIX = "csbot_stage_"
_stage_ids = itertools.count(1)
_SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def driver_connection(session: Session) -> Any:
    """The DBAPI connection under the session's current transaction (sqlite3 or psycopg)."""
    return session.connection().connection.driver_connection


def _dialect(session: Session) -> str:
    return str(session.get_bind().dialect.name)


@contextmanager
def bulk_mode(session: Session) -> Iterator[None]:
    """A larger SQLite page cache while bulk writes run (restored afterwards); nothing to do on PostgreSQL."""
    if _dialect(session) != "sqlite":
        yield
        return
    conn = driver_connection(session)
    (previous,) = conn.execute("PRAGMA cache_size").fetchone()
    conn.execute(f"PRAGMA cache_size=-{SQLITE_BULK_CACHE_KIB}")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA cache_size={int(previous)}")


# ------------------------------------------------------------------------------------------ stored values


def _float(value: Any) -> Any:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _int(value: Any) -> Any:
    return value if value is None or type(value) is int else int(value)


def _bool(value: Any) -> Any:
    return None if value is None else bool(value)


def _bool_sqlite(value: Any) -> Any:
    return None if value is None else int(bool(value))


def _json(value: Any) -> Any:
    # SQLAlchemy's JSON type serialises None too (JSON null); NULL itself is a `None` the column is nullable for.
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


def _to_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None) if value.tzinfo is None else value
    to_py = getattr(value, "to_pydatetime", None)  # pandas.Timestamp
    if to_py is not None:
        return to_py()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    raise TypeError(f"not a datetime: {value!r}")


def _date_value(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return _to_datetime(value).date()


def _date_sqlite(value: Any) -> Any:
    value = _date_value(value)
    return value if value is None or isinstance(value, str) else value.isoformat()


def _datetime_value(value: Any) -> Any:
    return value if value is None or isinstance(value, str) else _to_datetime(value)


def _datetime_sqlite(value: Any) -> Any:
    value = _datetime_value(value)
    return value if value is None or isinstance(value, str) else value.strftime(_SQLITE_DATETIME)


def _converter(column_type: Any, sqlite: bool) -> Callable[[Any], Any] | None:
    """How one column's values are stored on the dialect; None when they go as they are (text, ints)."""
    if isinstance(column_type, JSON):
        return _json
    if isinstance(column_type, DateTime):
        return _datetime_sqlite if sqlite else _datetime_value
    if isinstance(column_type, Date):
        return _date_sqlite if sqlite else _date_value
    if isinstance(column_type, Boolean):
        return _bool_sqlite if sqlite else _bool
    if isinstance(column_type, Float | Numeric):
        return _float
    if isinstance(column_type, Integer):
        return _int
    return None


def stored_values(
    dialect: str, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """`rows` (tuples in `columns` order) with every value in the form its column of `table` stores on `dialect`
    ("sqlite" or "postgresql"): see the module docstring. Converted column by column."""
    sqlite = dialect == "sqlite"
    converters = [_converter(table.c[name].type, sqlite) for name in columns]
    if not rows:
        return []
    if all(c is None for c in converters):
        return [tuple(r) for r in rows]
    by_column = list(zip(*rows, strict=True))
    out_columns = [values if convert is None else list(map(convert, values))
                   for values, convert in zip(by_column, converters, strict=True)]
    return list(zip(*out_columns, strict=True))


# ------------------------------------------------------------------------------------------------ staging


@contextmanager
def _staging(session: Session, table: Table, columns: Sequence[str],
             rows: Sequence[tuple[Any, ...]]) -> Iterator[tuple[Any, str]]:
    """A temporary table holding `rows` (already stored values) in `columns`, dropped afterwards; yields the
    driver cursor and the staging table's quoted name. PostgreSQL: the target's column types, filled by COPY.
    SQLite: untyped columns (the values reach the target exactly as a bound parameter would), filled by
    executemany."""
    conn = driver_connection(session)
    cols = ", ".join(_quote(c) for c in columns)
    stage = _quote(f"{_STAGE_PREFIX}{table.name}_{next(_stage_ids)}")
    cur = conn.cursor()
    try:
        if _dialect(session) == "postgresql":
            cur.execute(f"CREATE TEMPORARY TABLE {stage} ON COMMIT DROP AS SELECT {cols} FROM {_quote(table.name)} "
                        "WITH NO DATA")
            with cur.copy(f"COPY {stage} ({cols}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cur.execute(f"ANALYZE {stage}")
        else:
            cur.execute(f"CREATE TEMPORARY TABLE {stage} ({cols})")
            marks = ", ".join("?" for _ in columns)
            cur.executemany(f"INSERT INTO {stage} VALUES ({marks})", rows)
        yield cur, stage
        cur.execute(f"DROP TABLE {stage}")
    finally:
        cur.close()


def _sqlite_has_update_from() -> bool:
    return sqlite3.sqlite_version_info >= SQLITE_UPDATE_FROM


def upsert_rows(
    session: Session,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    *,
    conflict: Sequence[str],
    update: Sequence[str],
) -> int:
    """Insert `rows` (tuples in `columns` order) into `table`; a clash on the unique `conflict` columns updates
    `update` to the row's values. Returns the number of rows sent."""
    if not rows:
        return 0
    dialect = _dialect(session)
    values = stored_values(dialect, table, columns, rows)
    cols = ", ".join(_quote(c) for c in columns)
    keys = ", ".join(_quote(c) for c in conflict)
    sets = ", ".join(f"{_quote(c)} = excluded.{_quote(c)}" for c in update)
    action = f"DO UPDATE SET {sets}" if update else "DO NOTHING"
    name = _quote(table.name)
    if dialect == "postgresql":
        with _staging(session, table, columns, values) as (cur, stage):
            cur.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT ({keys}) {action}")
        return len(rows)
    marks = ", ".join("?" for _ in columns)
    cur = driver_connection(session).cursor()
    try:
        cur.executemany(f"INSERT INTO {name} ({cols}) VALUES ({marks}) ON CONFLICT ({keys}) {action}", values)
    finally:
        cur.close()
    return len(rows)


def update_rows(
    session: Session,
    table: Table,
    key_columns: Sequence[str],
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
) -> int:
    """Set `columns` of the rows of `table` whose `key_columns` match, from `rows` (tuples of the key values then
    the column values, in `[*key_columns, *columns]` order; keys unique among the rows). A key that matches no row
    changes nothing. Returns the number of rows matched."""
    if not rows:
        return 0
    if not columns:
        raise ValueError("update_rows needs at least one column to set")
    dialect = _dialect(session)
    everything = [*key_columns, *columns]
    values = stored_values(dialect, table, everything, rows)
    name = _quote(table.name)
    if dialect == "sqlite" and not _sqlite_has_update_from():
        sets = ", ".join(f"{_quote(c)} = ?" for c in columns)
        where = " AND ".join(f"{_quote(k)} = ?" for k in key_columns)
        width = len(key_columns)
        cur = driver_connection(session).cursor()
        try:
            cur.executemany(f"UPDATE {name} SET {sets} WHERE {where}", [(*r[width:], *r[:width]) for r in values])
            return int(cur.rowcount)
        finally:
            cur.close()
    with _staging(session, table, everything, values) as (cur, stage):
        sets = ", ".join(f"{_quote(c)} = s.{_quote(c)}" for c in columns)
        where = " AND ".join(f"{name}.{_quote(k)} = s.{_quote(k)}" for k in key_columns)
        cur.execute(f"UPDATE {name} SET {sets} FROM {stage} AS s WHERE {where}")
        return int(cur.rowcount)


def insert_rows(session: Session, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> int:
    """Insert `rows` (tuples in `columns` order; columns left out take their defaults, e.g. the id) into `table`.
    Returns the number of rows written."""
    if not rows:
        return 0
    dialect = _dialect(session)
    values = stored_values(dialect, table, columns, rows)
    cols = ", ".join(_quote(c) for c in columns)
    cur = driver_connection(session).cursor()
    try:
        if dialect == "postgresql":
            with cur.copy(f"COPY {_quote(table.name)} ({cols}) FROM STDIN") as copy:
                for row in values:
                    copy.write_row(row)
        else:
            marks = ", ".join("?" for _ in columns)
            cur.executemany(f"INSERT INTO {_quote(table.name)} ({cols}) VALUES ({marks})", values)
    finally:
        cur.close()
    return len(rows)


def delete_rows(session: Session, table: Table, key_columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> int:
    """Delete the rows of `table` whose `key_columns` equal one of `rows` (tuples in `key_columns` order): all of
    them must match, so e.g. (account, version) deletes a mark only while its version is still the one given.
    Returns the number of rows deleted."""
    if not rows:
        return 0
    dialect = _dialect(session)
    values = stored_values(dialect, table, key_columns, rows)
    name = _quote(table.name)
    where = " AND ".join(f"{name}.{_quote(k)} = s.{_quote(k)}" for k in key_columns)
    with _staging(session, table, key_columns, values) as (cur, stage):
        if dialect == "postgresql":
            cur.execute(f"DELETE FROM {name} USING {stage} AS s WHERE {where}")
        else:
            # A row-value IN: SQLite looks each staged key up in the target's index (a correlated EXISTS would scan
            # the staging table once per target row).
            keys = ", ".join(_quote(k) for k in key_columns)
            cur.execute(f"DELETE FROM {name} WHERE ({keys}) IN (SELECT {keys} FROM {stage})")
        return int(cur.rowcount)
