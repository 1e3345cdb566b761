"""Bulk upserts close to the database's own speed: plain tuples through the driver, no ORM per row.

- PostgreSQL: the rows are streamed with COPY (psycopg's copy API) into a temporary staging table, then moved
  with one `INSERT … SELECT … ON CONFLICT DO UPDATE`.
- SQLite: one `executemany` of an `INSERT … ON CONFLICT DO UPDATE` on the raw sqlite3 cursor, with a larger page
  cache for the duration (the default 2 MiB makes a big table's indexes spill on every page).

Both run inside the caller's transaction (on the session's own connection) and never commit, so a failure
later in the same transaction still leaves nothing written. Values must already be what the column stores:
ints, text, and dates as ISO text (`YYYY-MM-DD`, how SQLAlchemy stores a DATE on SQLite).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Table
from sqlmodel import Session

# SQLite page cache while a bulk write runs (negative = KiB): the indexes of a table of millions of rows fit.
SQLITE_BULK_CACHE_KIB = 262_144
_STAGE_PREFIX = "csbot_stage_"
_stage_ids = itertools.count(1)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def driver_connection(session: Session) -> Any:
    """The DBAPI connection under the session's current transaction (sqlite3 or psycopg)."""
    return session.connection().connection.driver_connection


@contextmanager
def bulk_mode(session: Session) -> Iterator[None]:
    """A larger SQLite page cache while bulk writes run (restored afterwards); nothing to do on PostgreSQL."""
    if session.get_bind().dialect.name != "sqlite":
        yield
        return
    conn = driver_connection(session)
    (previous,) = conn.execute("PRAGMA cache_size").fetchone()
    conn.execute(f"PRAGMA cache_size=-{SQLITE_BULK_CACHE_KIB}")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA cache_size={int(previous)}")


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
    cols = ", ".join(_quote(c) for c in columns)
    keys = ", ".join(_quote(c) for c in conflict)
    sets = ", ".join(f"{_quote(c)} = excluded.{_quote(c)}" for c in update)
    action = f"DO UPDATE SET {sets}" if update else "DO NOTHING"
    name = _quote(table.name)
    conn = driver_connection(session)
    if session.get_bind().dialect.name == "postgresql":
        stage = _quote(f"{_STAGE_PREFIX}{table.name}_{next(_stage_ids)}")
        with conn.cursor() as cur:
            cur.execute(f"CREATE TEMPORARY TABLE {stage} ON COMMIT DROP AS SELECT {cols} FROM {name} WITH NO DATA")
            with cur.copy(f"COPY {stage} ({cols}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cur.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT ({keys}) {action}")
            cur.execute(f"DROP TABLE {stage}")
        return len(rows)
    marks = ", ".join("?" for _ in columns)
    cur = conn.cursor()
    try:
        cur.executemany(f"INSERT INTO {name} ({cols}) VALUES ({marks}) ON CONFLICT ({keys}) {action}", rows)
    finally:
        cur.close()
    return len(rows)
