"""Shared fixtures: a fresh, migrated database per test, an offline network environment, and the fake chat servers.

The database is SQLite by default; `pytest --db postgres` (or CSBOT_TEST_DB=postgres) gives every test that uses
`db_url`/`engine`/`session` a fresh PostgreSQL database instead, from the temporary server in conftest_pg.py.
`scripts/test.sh` runs the suite both ways. A test that is about SQLite itself, or whose outcome cannot depend on
the database (the permission matrix asked in words repeats the typed matrix's database work), is marked
`sqlite_only`; a test that uses no database fixture at all is skipped by the PostgreSQL pass too.

`fake_slack`, `fake_telegram` and `fake_feishu` are the fake platform APIs of tests/fakes/, started for one test;
tests/fakes/chat_requests.py builds and signs the requests the platforms send to csbot.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from conftest_pg import PG_FIXTURES
from sqlalchemy import Engine
from sqlmodel import Session

from lifecycle.store.db import ensure_schema, make_engine
from tests.fakes.feishu_api import FakeFeishu, forget_tenant_token
from tests.fakes.slack_api import FakeSlackAPI
from tests.fakes.telegram_api import FakeTelegramAPI

pytest_plugins = ["conftest_pg", "security_counts"]

# No test may reach the internet or a proxy; Slack/Telegram settings come only from the tests themselves.
for _var in (
    "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy",
    "SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN", "SLACK_API_URL",
    "TELEGRAM_BOT_TOKEN", "TELEGRAM_API_URL", "TELEGRAM_WEBHOOK_SECRET", "CSBOT_DATABASE_URL",
    "FEISHU_APP_ID", "FEISHU_APP_SECRET", "FEISHU_VERIFICATION_TOKEN", "FEISHU_ENCRYPT_KEY", "FEISHU_DOMAIN",
):
    os.environ.pop(_var, None)
os.environ["NO_PROXY"] = "127.0.0.1,localhost"
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("PTB_TIMEDELTA", "1")

_extra_numbers = itertools.count(1)
# The fixtures through which a test reaches the database under test; a test using none of them (directly or through
# another fixture) runs the same on both passes, so the PostgreSQL pass skips it.
_DB_FIXTURES = frozenset({"db_url", "new_db_url", "engine", "session"}) | PG_FIXTURES


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db", choices=("sqlite", "postgres"), default=os.environ.get("CSBOT_TEST_DB", "sqlite"),
        help="database every test's `db_url`/`engine` runs on (default sqlite)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only: about SQLite itself (or not about the database); skipped with --db postgres"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--db") != "postgres":
        return
    skip = pytest.mark.skip(reason="about SQLite itself (--db postgres)")
    no_database = pytest.mark.skip(reason="uses no database fixture: its outcome is the SQLite pass's (--db postgres)")
    for item in items:
        if item.get_closest_marker("sqlite_only"):
            item.add_marker(skip)
        elif not _DB_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(no_database)


@pytest.fixture(scope="session")
def _template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One database migrated with Alembic; each test gets a copy (migrating per test would be slow)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    ensure_schema(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.config.getoption("--db") == "postgres":
        return str(request.getfixturevalue("pg_url"))
    path = tmp_path / "csbot.db"
    _template_db: Path = request.getfixturevalue("_template_db")
    shutil.copy(_template_db, path)
    return f"sqlite:///{path}"


@pytest.fixture
def new_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., str]:
    """A factory of further fresh databases on the test's backend: `new_db_url("other")` is migrated like
    `db_url`; `new_db_url("empty", migrated=False)` has no schema at all."""
    if request.config.getoption("--db") == "postgres":
        server = request.getfixturevalue("pg_server")
        template: str = request.getfixturevalue("_pg_template")
        made: list[str] = []

        def on_postgres(name: str, *, migrated: bool = True) -> str:
            db = f"{name}_{len(made)}_{next(_extra_numbers)}"
            made.append(db)
            return str(server.create_database(db, template=template if migrated else None))

        request.addfinalizer(lambda: [server.drop_database(db) for db in made])
        return on_postgres

    def on_sqlite(name: str, *, migrated: bool = True) -> str:
        path = tmp_path / f"{name}.db"
        if migrated:
            shutil.copy(request.getfixturevalue("_template_db"), path)
        return f"sqlite:///{path}"

    return on_sqlite


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as s:
        yield s


@pytest.fixture
def fake_slack() -> Iterator[FakeSlackAPI]:
    """The fake Slack Web API (its own thread), for slack_sdk clients with `base_url=fake_slack.api_url`."""
    with FakeSlackAPI() as api:
        yield api


@pytest.fixture
async def fake_telegram() -> AsyncIterator[FakeTelegramAPI]:
    """The fake Telegram Bot API on the test's event loop, for python-telegram-bot at `fake_telegram.api_url`."""
    api = FakeTelegramAPI()
    await api.start()
    yield api
    await api.stop()


@pytest.fixture
async def fake_feishu() -> AsyncIterator[FakeFeishu]:
    """The fake Feishu open platform on the test's event loop; the SDK's cached tenant token is forgotten before
    and after, so each test fetches its own."""
    forget_tenant_token()
    api = FakeFeishu()
    await api.start()
    yield api
    await api.stop()
    forget_tenant_token()
