"""usage partitions: `usage_daily` range-partitioned by month on PostgreSQL (see `lifecycle.store.partitions`)

Revision ID: 0015
Revises: 0014

PostgreSQL only: the plain `usage_daily` is renamed aside, a partitioned `usage_daily` (PARTITION BY RANGE (day),
primary key (id, day), the same unique key, indexes and foreign key) is created with a DEFAULT partition, one
partition for every month that has rows and for the current month and the next `MONTHS_AHEAD`; the rows are
copied over with their ids (the id sequence carries on), any triggers of the old table are recreated on the new
one, and the old table is dropped. The downgrade does the reverse into one plain table.

SQLite: nothing to do (one file for one team: the table stays a plain table; retention there is a DELETE).
"""
from datetime import UTC, datetime

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_COLUMNS = (
    "id integer NOT NULL DEFAULT nextval('usage_daily_id_seq'::regclass), "
    "account_id integer NOT NULL, day date NOT NULL, feature varchar NOT NULL, "
    "active_users integer NOT NULL, logins integer NOT NULL, events integer NOT NULL"
)
_COPY = "id, account_id, day, feature, active_users, logins, events"


def _triggers(bind) -> list[str]:  # type: ignore[no-untyped-def]
    """The CREATE TRIGGER statements of the table now called usage_daily (naming it `usage_daily`)."""
    return list(bind.exec_driver_sql(
        "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'usage_daily'::regclass AND NOT tgisinternal "
        "AND tgparentid = 0"
    ).scalars())


def _set_aside(bind, old: str) -> None:  # type: ignore[no-untyped-def]
    """Rename usage_daily to `old`, freeing the names of its keys and indexes."""
    bind.exec_driver_sql(f"ALTER TABLE usage_daily RENAME TO {old}")
    bind.exec_driver_sql(f"ALTER TABLE {old} RENAME CONSTRAINT usage_daily_pkey TO {old}_pkey")
    bind.exec_driver_sql(f"ALTER TABLE {old} RENAME CONSTRAINT uq_usage_account_feature_day TO {old}_uq")
    bind.exec_driver_sql("DROP INDEX IF EXISTS ix_usage_day")
    bind.exec_driver_sql("DROP INDEX IF EXISTS ix_usage_cover")


def _finish(bind, old: str, triggers: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Indexes, triggers and the id sequence for the new usage_daily; drop `old`."""
    bind.exec_driver_sql("CREATE INDEX ix_usage_day ON usage_daily (day)")
    bind.exec_driver_sql("CREATE INDEX ix_usage_cover ON usage_daily "
                         "(account_id, feature, day, active_users, logins, events)")
    for statement in triggers:
        bind.exec_driver_sql(statement)
    bind.exec_driver_sql("ALTER SEQUENCE usage_daily_id_seq OWNED BY usage_daily.id")
    bind.exec_driver_sql(f"DROP TABLE {old}")
    bind.exec_driver_sql("ANALYZE usage_daily")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    from lifecycle.store.partitions import MONTHS_AHEAD, add_months, create_default, create_month, is_partitioned

    if is_partitioned(bind):
        return
    triggers = _triggers(bind)
    _set_aside(bind, "usage_daily_plain")
    bind.exec_driver_sql(
        f"CREATE TABLE usage_daily ({_COLUMNS}, "
        "CONSTRAINT usage_daily_pkey PRIMARY KEY (id, day), "
        "CONSTRAINT uq_usage_account_feature_day UNIQUE (account_id, feature, day), "
        "CONSTRAINT usage_daily_account_id_fkey FOREIGN KEY (account_id) REFERENCES account (id)"
        ") PARTITION BY RANGE (day)"
    )
    create_default(bind)
    this_month = datetime.now(UTC).date().replace(day=1)
    months = set(bind.exec_driver_sql(
        "SELECT DISTINCT date_trunc('month', day)::date FROM usage_daily_plain").scalars())
    months.update(add_months(this_month, n) for n in range(MONTHS_AHEAD + 1))
    for month in sorted(months):
        create_month(bind, month)
    bind.exec_driver_sql(f"INSERT INTO usage_daily ({_COPY}) SELECT {_COPY} FROM usage_daily_plain")
    _finish(bind, "usage_daily_plain", triggers)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    from lifecycle.store.partitions import is_partitioned

    if not is_partitioned(bind):
        return
    triggers = _triggers(bind)
    _set_aside(bind, "usage_daily_parted")
    bind.exec_driver_sql(
        f"CREATE TABLE usage_daily ({_COLUMNS}, "
        "CONSTRAINT usage_daily_pkey PRIMARY KEY (id), "
        "CONSTRAINT uq_usage_account_feature_day UNIQUE (account_id, feature, day), "
        "CONSTRAINT usage_daily_account_id_fkey FOREIGN KEY (account_id) REFERENCES account (id))"
    )
    bind.exec_driver_sql(f"INSERT INTO usage_daily ({_COPY}) SELECT {_COPY} FROM usage_daily_parted")
    _finish(bind, "usage_daily_parted", triggers)
