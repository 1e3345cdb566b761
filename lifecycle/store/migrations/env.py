"""Alembic environment: runs migrations on the engine csbot hands over (or the URL in the config)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool
from sqlmodel import SQLModel

import lifecycle.store.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from lifecycle.store.partitions import PARTITION_NAME

config = context.config
target_metadata = SQLModel.metadata
# Tables that live in the database but not in the models: autogenerate must never emit a DROP for them.
FOREIGN_TABLES = frozenset({"apscheduler_jobs"})  # APScheduler's persistent job store (bot/push/jobs.py)


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Leave alone what other software keeps in our database (its tables and their indexes and columns), and
    the monthly partitions of `usage_daily` on PostgreSQL, which are part of that table
    (`lifecycle.store.partitions`)."""
    table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
    return table not in FOREIGN_TABLES and not (table and PARTITION_NAME.match(table))


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True, include_object=include_object)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        engine = engine_from_config(config.get_section(config.config_ini_section) or {},
                                    prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                          include_object=include_object)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
