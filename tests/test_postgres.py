"""Storage on a real PostgreSQL server: Alembic migration, the dialect-aware bulk upsert, JSON columns."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, func, inspect
from sqlmodel import SQLModel, select

from lifecycle.store.db import alembic_config, current_revision, ensure_schema, session_scope, upsert
from lifecycle.store.models import Account, HealthSnapshot, UsageDaily, User, utcnow

pytestmark = pytest.mark.postgres


def _head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def _add_accounts(engine: Engine, count: int) -> list[int]:
    """Insert `count` accounts ACC-1..ACC-n and return their ids in that order."""
    now = utcnow()
    rows: list[dict[str, Any]] = [
        {
            "external_id": f"ACC-{i}", "name": f"Account {i}", "name_key": f"account {i}", "arr": 1000.0 * i,
            "currency": "USD", "seats": 10, "status": "active", "stage": "onboarding", "stage_since": now,
            "stage_pinned": False, "created_at": now, "updated_at": now,
        }
        for i in range(1, count + 1)
    ]
    with session_scope(engine) as session:
        upsert(session, Account, rows, conflict=["external_id"])
    with engine.connect() as conn:
        stored = conn.execute(select(Account.external_id, Account.id)).all()
    by_external = {external_id: account_id for external_id, account_id in stored}
    return [by_external[f"ACC-{i}"] for i in range(1, count + 1)]


def _user_row(email: str, name: str, role: str = "csm") -> dict[str, Any]:
    now = utcnow()
    return {"email": email, "name": name, "role": role, "timezone": "UTC", "active": True,
            "created_at": now, "updated_at": now}


def test_upgrade_creates_every_model_table_with_its_columns(pg_engine: Engine) -> None:
    inspector = inspect(pg_engine)
    tables = set(inspector.get_table_names())
    assert set(SQLModel.metadata.tables) <= tables
    assert "alembic_version" in tables
    for name, table in SQLModel.metadata.tables.items():
        assert {c["name"] for c in inspector.get_columns(name)} == set(table.columns.keys()), name
    assert current_revision(pg_engine) == _head_revision(pg_engine)


def test_second_upgrade_changes_nothing_and_keeps_data(pg_engine: Engine) -> None:
    with session_scope(pg_engine) as session:
        upsert(session, User, [_user_row("ana@example.com", "Ana")], conflict=["email"])
    tables_before = sorted(inspect(pg_engine).get_table_names())
    revision_before = current_revision(pg_engine)

    ensure_schema(pg_engine)

    assert current_revision(pg_engine) == revision_before == _head_revision(pg_engine)
    assert sorted(inspect(pg_engine).get_table_names()) == tables_before
    with pg_engine.connect() as conn:
        assert conn.execute(select(User.email)).scalars().all() == ["ana@example.com"]


def test_upsert_inserts_then_updates_then_ignores_users(pg_engine: Engine) -> None:
    first = [_user_row("ana@example.com", "Ana"), _user_row("bo@example.com", "Bo")]
    with session_scope(pg_engine) as session:
        assert upsert(session, User, first, conflict=["email"]) == 2

    # A clash on email updates the given columns; the new address is inserted.
    second = [_user_row("ana@example.com", "Ana Lima", role="manager"), _user_row("cy@example.com", "Cy")]
    with session_scope(pg_engine) as session:
        assert upsert(session, User, second, conflict=["email"], update=["name", "role"]) == 2

    # update=[] keeps what is stored on a clash.
    third = [_user_row("bo@example.com", "Robert", role="admin")]
    with session_scope(pg_engine) as session:
        upsert(session, User, third, conflict=["email"], update=[])

    with pg_engine.connect() as conn:
        stored = conn.execute(select(User.email, User.name, User.role).order_by(User.email)).all()
    assert [tuple(r) for r in stored] == [
        ("ana@example.com", "Ana Lima", "manager"),
        ("bo@example.com", "Bo", "csm"),
        ("cy@example.com", "Cy", "csm"),
    ]


def test_upsert_on_composite_key_updates_usage_counts(pg_engine: Engine) -> None:
    (account_id,) = _add_accounts(pg_engine, 1)
    day = date(2025, 3, 1)
    rows = [
        {"account_id": account_id, "day": day, "feature": "", "active_users": 4, "logins": 9, "events": 30},
        {"account_id": account_id, "day": day, "feature": "reports", "active_users": 2, "logins": 0,
         "events": 7},
    ]
    with session_scope(pg_engine) as session:
        upsert(session, UsageDaily, rows, conflict=["account_id", "feature", "day"])
    corrected = [{"account_id": account_id, "day": day, "feature": "reports", "active_users": 3, "logins": 0,
                  "events": 11}]
    with session_scope(pg_engine) as session:
        upsert(session, UsageDaily, corrected, conflict=["account_id", "feature", "day"])
    ignored = [{"account_id": account_id, "day": day, "feature": "", "active_users": 99, "logins": 99,
                "events": 99}]
    with session_scope(pg_engine) as session:
        upsert(session, UsageDaily, ignored, conflict=["account_id", "feature", "day"], update=[])

    with pg_engine.connect() as conn:
        columns = select(UsageDaily.feature, UsageDaily.active_users, UsageDaily.events)
        stored = conn.execute(columns.order_by(UsageDaily.feature)).all()
    assert [tuple(r) for r in stored] == [("", 4, 30), ("reports", 3, 11)]


def test_naive_utc_timestamps_round_trip_unchanged(pg_engine: Engine) -> None:
    row = _user_row("ana@example.com", "Ana")
    with session_scope(pg_engine) as session:
        upsert(session, User, [row], conflict=["email"])
    with pg_engine.connect() as conn:
        created = conn.execute(select(User.created_at)).scalar_one()
    assert created.tzinfo is None
    assert created == row["created_at"]


def test_json_measures_round_trip(pg_engine: Engine) -> None:
    (account_id,) = _add_accounts(pg_engine, 1)
    measures = {
        "licence_utilisation": {"value": 0.625, "points": 18.75, "band": "yellow", "fresh_days": 1},
        "nps": {"value": None, "points": 0.0, "band": None, "note": "no answer yet — détracteur?"},
        "drivers": ["usage_trend", "login_recency"],
    }
    with session_scope(pg_engine) as session:
        session.add(HealthSnapshot(account_id=account_id, day=date(2025, 3, 1), score=61.5, grade="yellow",
                                   measures=measures, scorecard_version="v1"))
    with pg_engine.connect() as conn:
        stored = conn.execute(select(HealthSnapshot.measures)).scalar_one()
    assert stored == measures


def test_upsert_of_50000_usage_rows_is_chunked_under_the_parameter_limit(pg_engine: Engine) -> None:
    # 50,000 rows x 6 columns = 300,000 parameters: five times PostgreSQL's 65,535 limit for one statement.
    account_ids = _add_accounts(pg_engine, 25)
    start = date(2019, 1, 1)
    rows = [
        {"account_id": account_id, "day": start + timedelta(days=d), "feature": "", "active_users": 1,
         "logins": index, "events": 2}
        for index, account_id in enumerate(account_ids)
        for d in range(2000)
    ]
    with session_scope(pg_engine) as session:
        assert upsert(session, UsageDaily, rows, conflict=["account_id", "feature", "day"]) == 50_000

    for row in rows:
        row["events"] = 3
    with session_scope(pg_engine) as session:
        upsert(session, UsageDaily, rows, conflict=["account_id", "feature", "day"], update=["events"])

    with pg_engine.connect() as conn:
        count, logins, events = conn.execute(
            select(func.count(), func.sum(UsageDaily.logins), func.sum(UsageDaily.events))
        ).one()
    # logins: each of the 25 accounts has its index 0..24 on 2000 days -> 2000 * (0 + 1 + ... + 24) = 600,000.
    assert (count, logins, events) == (50_000, 600_000, 150_000)
