"""PostgreSQL fixtures for the integration tests: one server per session, a fresh migrated database per test.

Loaded from tests/conftest.py through `pytest_plugins`. Every test using these fixtures is marked `postgres`
automatically, so `pytest -m "not postgres"` runs the SQLite suite alone. Without PostgreSQL binaries the
tests are skipped, except under CI (`CI=true`), where a missing server is a failure: CI must really run them.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import NoReturn

import pytest
from pgserver import PostgresServer, PostgresUnavailable, find_pg_bindir
from sqlalchemy import Engine

from lifecycle.store.db import ensure_schema, make_engine

_TEMPLATE_DB = "csbot_template"
PG_FIXTURES = {"pg_server", "pg_url", "pg_engine"}
_db_numbers = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: integration test against a real, throwaway PostgreSQL")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if PG_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the PostgreSQL integration tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A temporary PostgreSQL server for the whole session, stopped and deleted at the end."""
    bindir = find_pg_bindir()
    if bindir is None:
        _unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found; run `bash scripts/test.sh`")
    try:
        server = PostgresServer(bindir).start()
    except PostgresUnavailable as exc:
        _unavailable(f"could not start a temporary PostgreSQL server: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _pg_template(pg_server: PostgresServer) -> str:
    """A database migrated once with Alembic; each test's database is a copy (CREATE DATABASE … TEMPLATE)."""
    engine = make_engine(pg_server.create_database(_TEMPLATE_DB))
    try:
        ensure_schema(engine)
    finally:
        # A template must have no open connections when it is copied.
        engine.dispose()
    return _TEMPLATE_DB


@pytest.fixture
def pg_url(pg_server: PostgresServer, _pg_template: str) -> Iterator[str]:
    """SQLAlchemy URL of a fresh PostgreSQL database at the latest schema revision, dropped after the test."""
    name = f"csbot_test_{next(_db_numbers)}"
    url = pg_server.create_database(name, template=_pg_template)
    yield url
    pg_server.drop_database(name)


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """An engine on the test's fresh PostgreSQL database, disposed after the test."""
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()
