"""Engine, sessions, schema migration (Alembic) and the bulk upsert shared by importers and recompute."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, event, inspect
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, SQLModel, create_engine

from lifecycle.store.errors import ConfigError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
CONNECT_BACKOFF_FIRST = 0.5  # seconds before the second try at reaching the database; doubles each time
CONNECT_BACKOFF_MAX = 5.0

log = logging.getLogger("csbot.db")

def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout so the bot and jobs can share it."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config(engine: Engine) -> Any:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "heads") -> None:
    """Apply Alembic migrations up to `revision` (idempotent); by default every head."""
    try:
        command.upgrade(alembic_config(engine), revision)
    except OperationalError as exc:
        raise ConfigError(f"Cannot reach the database at {engine.url!r}: {exc.orig}") from exc


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        heads = MigrationContext.configure(conn).get_current_heads()
    return ",".join(sorted(heads)) if heads else None


def ensure_schema(
    engine: Engine,
    *,
    connect_timeout: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Bring the schema to the latest revision; used on every start, so first start creates it.

    A database server that cannot be reached yet (still starting, a failover, a network blip) is tried again
    with backoff (0.5 s, doubling, at most 5 s apart) for up to `connect_timeout` seconds; then the
    `ConfigError` names the database (its password hidden) and how long it was tried. SQLite is tried once:
    a file that cannot be opened does not appear by waiting."""
    deadline = clock() + connect_timeout
    delay = CONNECT_BACKOFF_FIRST
    tries = 0
    while True:
        tries += 1
        try:
            upgrade(engine)
            return
        except ConfigError as exc:
            if engine.dialect.name == "sqlite" or connect_timeout <= 0:
                raise
            left = deadline - clock()
            if left <= 0:
                raise ConfigError(
                    f"{exc} — gave up after {tries} tries in {connect_timeout:g} s (CSBOT_DB_CONNECT_TIMEOUT)"
                ) from exc
            wait = min(delay, left)
            log.warning("database %r unavailable (try %d); retrying in %.1f s", engine.url, tries, wait)
            sleep(wait)
            delay = min(delay * 2, CONNECT_BACKOFF_MAX)


def has_table(engine: Engine, name: str) -> bool:
    return inspect(engine).has_table(name)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def upsert(
    session: Session,
    model: type[SQLModel],
    rows: Sequence[dict[str, Any]],
    *,
    conflict: Sequence[str],
    update: Sequence[str] | None = None,
) -> int:
    """Insert `rows` into the table of `model`; on a clash of the unique `conflict` columns, update `update`.

    `update=None` updates every column given in the rows except the conflict columns; `update=[]` ignores
    clashes. One executemany statement: SQLAlchemy batches the rows within each driver's limits.
    Returns the number of rows sent.
    """
    if not rows:
        return 0
    table = model.__table__  # type: ignore[attr-defined]
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    columns = list(rows[0].keys())
    to_update = [c for c in columns if c not in conflict] if update is None else list(update)
    stmt = insert(table)
    if to_update:
        stmt = stmt.on_conflict_do_update(
            index_elements=list(conflict), set_={c: stmt.excluded[c] for c in to_update}
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict))
    session.connection().execute(stmt, list(rows))
    return len(rows)


def create_all_for_tests(engine: Engine) -> None:
    """Create tables straight from the models (only for throwaway databases; production uses `upgrade`)."""
    SQLModel.metadata.create_all(engine)
