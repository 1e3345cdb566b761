"""Raw usage storage at scale: `usage_daily` as monthly PostgreSQL partitions, created ahead, and retention.

On PostgreSQL (migration 0014) `usage_daily` is a declaratively partitioned table, `PARTITION BY RANGE (day)`,
with one partition per calendar month named `usage_daily_y2026m03` (days 2026-03-01 up to, not including,
2026-04-01) and a DEFAULT partition `usage_daily_default` that takes any row whose month has no partition yet, so
no write is ever rejected. Its primary key is `(id, day)` (a partitioned table's unique keys must hold the
partition key); the natural key `(account_id, feature, day)` that every upsert targets already does.

- `ensure_partitions` creates the partitions of the month of `through` and the `MONTHS_AHEAD` months after it,
  plus one for every month that has rows waiting in DEFAULT up to then; those rows move into their partition
  (PostgreSQL refuses to create a partition whose range still has rows in DEFAULT: the new month is built as a
  plain table, the rows are moved into it, then it is attached). Idempotent, and serialised across replicas by
  a transaction-level advisory lock, so two nightly runs at once do not collide. The nightly job runs it.
- `prune_usage` drops the partitions wholly older than the retention (the current month and the `keep_months`
  whole months before it are kept) and deletes the older rows that sit in DEFAULT; on SQLite (or a plain table)
  it is one `DELETE … WHERE day < cutoff`. It refuses a retention shorter than `MIN_RETENTION_MONTHS`, so the
  health windows (at most 90 days back) never lose data.
- The usage roll-ups are left as they are: each summarises an account's newest `ROLLUP_DAYS` (64) days, which any
  allowed retention keeps, and its `first_feature_day` keeps recording since when the account sends per-feature
  usage, so the health of today is the same before and after a prune. (A later `csbot rebuild-rollups` starts
  `first_feature_day` at the oldest kept row instead.) What a retention does shorten is the history the churn
  model learns from and the backtests replay.
- `describe_partitions` lists the partitions (or the one plain table) for `csbot usage partitions`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import Connection, text
from sqlmodel import Session

from lifecycle.store.errors import ConfigError

log = logging.getLogger("csbot.partitions")

PARENT = "usage_daily"
DEFAULT_PARTITION = "usage_daily_default"
# The partitions' names: what Alembic's autogenerate must treat as part of `usage_daily`, not as stray tables.
PARTITION_NAME = re.compile(r"^usage_daily_(y\d{4}m\d{2}|default)$")
MONTHS_AHEAD = 3  # partitions exist this many months past the current one
MIN_RETENTION_MONTHS = 4  # whole months kept before the current one: more than the longest health window (90 days)
COLUMNS = ("id", "account_id", "day", "feature", "active_users", "logins", "events")
LOCK_KEY = 0x6373_626F_7475_7064  # pg_advisory_xact_lock key for partition upkeep ("csbotupd")
_BOUND = re.compile(r"FROM \('(\d{4}-\d{2}-\d{2})'\) TO \('(\d{4}-\d{2}-\d{2})'\)")


# ------------------------------------------------------------------------------------------- months and names


def month_start(day: date) -> date:
    return day.replace(day=1)


def add_months(month: date, n: int) -> date:
    """The first day of the month `n` months after (before, when negative) the month of `month`."""
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


def partition_name(month: date) -> str:
    return f"{PARENT}_y{month.year:04d}m{month.month:02d}"


def _month_of(name: str) -> date | None:
    match = re.fullmatch(r"usage_daily_y(\d{4})m(\d{2})", name)
    return date(int(match.group(1)), int(match.group(2)), 1) if match else None


def is_partitioned(conn: Connection) -> bool:
    """Whether `usage_daily` is a partitioned table (PostgreSQL after migration 0014)."""
    if conn.dialect.name != "postgresql":
        return False
    return bool(conn.exec_driver_sql(
        "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass('usage_daily'))"
    ).scalar())


def _lock(conn: Connection) -> None:
    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({LOCK_KEY})")


def _monthly_partitions(conn: Connection) -> dict[date, str]:
    names = conn.exec_driver_sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'usage_daily'::regclass"
    ).scalars().all()
    return {month: name for name in names if (month := _month_of(name)) is not None}


# --------------------------------------------------------------------------------------------- creating them


@dataclass
class PartitionsEnsured:
    created: list[str] = field(default_factory=list)
    moved: int = 0  # rows moved out of DEFAULT into their new partition


def create_default(conn: Connection) -> None:
    conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {DEFAULT_PARTITION} PARTITION OF {PARENT} DEFAULT")


def create_month(conn: Connection, month: date) -> int:
    """Create the partition of `month`; rows of that month waiting in DEFAULT move into it. Returns how many
    moved. The caller holds the upkeep lock (or is the migration)."""
    name, low, high = partition_name(month), month.isoformat(), add_months(month, 1).isoformat()
    bounds = f"FOR VALUES FROM ('{low}') TO ('{high}')"
    waiting = conn.exec_driver_sql(
        f"SELECT EXISTS (SELECT 1 FROM {DEFAULT_PARTITION} WHERE day >= '{low}' AND day < '{high}')"
    ).scalar()
    if not waiting:
        conn.exec_driver_sql(f"CREATE TABLE {name} PARTITION OF {PARENT} {bounds}")
        return 0
    cols = ", ".join(COLUMNS)
    # The CHECK lets ATTACH skip scanning the new table; the parent's indexes, keys and triggers are attached to it.
    conn.exec_driver_sql(f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS, "
                         f"CONSTRAINT {name}_range CHECK (day >= '{low}' AND day < '{high}'))")
    moved = conn.exec_driver_sql(
        f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE day >= '{low}' AND day < '{high}' "
        f"RETURNING {cols}) INSERT INTO {name} ({cols}) SELECT {cols} FROM moved"
    ).rowcount
    conn.exec_driver_sql(f"ALTER TABLE {PARENT} ATTACH PARTITION {name} {bounds}")
    conn.exec_driver_sql(f"ALTER TABLE {name} DROP CONSTRAINT {name}_range")
    log.info("created usage partition %s with %d row(s) moved from %s", name, moved, DEFAULT_PARTITION)
    return int(moved)


def ensure_partitions(session: Session, through: date, *, ahead: int = MONTHS_AHEAD) -> PartitionsEnsured:
    """Create the monthly partitions of `through`'s month and the `ahead` months after it, and of every earlier
    month with rows waiting in DEFAULT (moving them in). Nothing to do on SQLite or a plain table."""
    conn = session.connection()
    done = PartitionsEnsured()
    if not is_partitioned(conn):
        return done
    _lock(conn)
    first, last = month_start(through), add_months(through, ahead)
    wanted = {add_months(first, n) for n in range(ahead + 1)}
    stray = conn.exec_driver_sql(
        f"SELECT DISTINCT date_trunc('month', day)::date FROM {DEFAULT_PARTITION} "
        f"WHERE day < '{add_months(last, 1).isoformat()}'"
    ).scalars().all()
    wanted.update(stray)
    existing = _monthly_partitions(conn)
    for month in sorted(wanted - existing.keys()):
        done.moved += create_month(conn, month)
        done.created.append(partition_name(month))
    return done


# --------------------------------------------------------------------------------------------------- retention


@dataclass
class PruneResult:
    cutoff: date  # rows of days before this are gone
    partitions: list[str] = field(default_factory=list)  # dropped whole
    rows_estimate: int = 0  # rows in the dropped partitions (PostgreSQL's estimate)
    rows_deleted: int = 0  # rows deleted one by one (SQLite, a plain table, or DEFAULT)
    dry_run: bool = False


def retention_cutoff(keep_months: int, today: date) -> date:
    """The first day kept: the current month and the `keep_months` whole months before it stay."""
    return add_months(month_start(today), -keep_months)


def check_retention(keep_months: int) -> None:
    if keep_months < MIN_RETENTION_MONTHS:
        raise ConfigError(
            f"A usage retention of {keep_months} month(s) is too short: keep at least {MIN_RETENTION_MONTHS} "
            "months, or the health windows (up to 90 days) would lose data."
        )


def prune_usage(session: Session, keep_months: int, today: date, *, dry_run: bool = False) -> PruneResult:
    """Remove the usage of days before `retention_cutoff(keep_months, today)`: whole partitions on PostgreSQL
    (plus the old rows in DEFAULT), one DELETE elsewhere. `dry_run` only counts. The roll-ups are kept (see the
    module docstring)."""
    check_retention(keep_months)
    conn = session.connection()
    cutoff = retention_cutoff(keep_months, today)
    done = PruneResult(cutoff=cutoff, dry_run=dry_run)
    if not is_partitioned(conn):
        where = "WHERE day < :cutoff"
        if dry_run:
            done.rows_deleted = int(session.execute(text(f"SELECT COUNT(*) FROM {PARENT} {where}"),
                                                    {"cutoff": cutoff}).scalar_one())
        else:
            done.rows_deleted = int(session.execute(text(f"DELETE FROM {PARENT} {where}"),
                                                    {"cutoff": cutoff}).rowcount)  # type: ignore[attr-defined]
        return done
    _lock(conn)
    old = sorted((month, name) for month, name in _monthly_partitions(conn).items() if add_months(month, 1) <= cutoff)
    for _month, name in old:
        estimate = conn.exec_driver_sql(f"SELECT reltuples::bigint FROM pg_class WHERE oid = '{name}'::regclass"
                                        ).scalar_one()
        done.rows_estimate += max(int(estimate), 0)
        done.partitions.append(name)
        if not dry_run:
            conn.exec_driver_sql(f"DROP TABLE {name}")
    stale = f"FROM {DEFAULT_PARTITION} WHERE day < '{cutoff.isoformat()}'"
    if dry_run:
        done.rows_deleted = int(conn.exec_driver_sql(f"SELECT COUNT(*) {stale}").scalar_one())
    else:
        done.rows_deleted = int(conn.exec_driver_sql(f"DELETE {stale}").rowcount)
    if done.partitions or done.rows_deleted:
        log.info("usage before %s %s: %d partition(s) (%s), %d row(s) from %s", cutoff,
                 "would go" if dry_run else "pruned", len(done.partitions), ", ".join(done.partitions) or "none",
                 done.rows_deleted, DEFAULT_PARTITION)
    return done


# ------------------------------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class PartitionInfo:
    name: str
    start: date | None  # first day held (None: DEFAULT, or the whole plain table)
    end: date | None  # first day no longer held
    rows: int | None  # PostgreSQL's estimate (None: not analysed yet); an exact count on SQLite
    bytes: int | None  # table and indexes on disk (None on SQLite)


def describe_partitions(session: Session) -> list[PartitionInfo]:
    """The partitions of `usage_daily`, oldest first and DEFAULT last; a plain table is one row for itself."""
    conn = session.connection()
    if not is_partitioned(conn):
        count = int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM {PARENT}").scalar_one())
        size = (conn.exec_driver_sql(f"SELECT pg_total_relation_size('{PARENT}')").scalar_one()
                if conn.dialect.name == "postgresql" else None)
        return [PartitionInfo(PARENT, None, None, count, size)]
    rows = conn.exec_driver_sql(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), c.reltuples::bigint, pg_total_relation_size(c.oid) "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'usage_daily'::regclass"
    ).all()
    out = []
    for name, bound, estimate, size in rows:
        match = _BOUND.search(bound or "")
        start, end = (date.fromisoformat(match.group(1)), date.fromisoformat(match.group(2))) if match else (None, None)
        out.append(PartitionInfo(name, start, end, int(estimate) if estimate >= 0 else None, int(size)))
    return sorted(out, key=lambda p: (p.start is None, p.start or date.min, p.name))
