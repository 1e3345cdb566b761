"""Usage roll-ups: kept batch by batch they equal a rebuild from the raw rows, and the signals frame read from them
equals the frame read from the raw rows, on random portfolios."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from lifecycle.scoring import rollups
from lifecycle.scoring.signals import build_signals
from lifecycle.store.db import upsert
from lifecycle.store.models import Account, Note, NpsResponse, Ticket, UsageDaily

AS_OF = date(2025, 3, 31)
FEATURES = ("", "", "", "reports", "api")


def _clear(session: Session) -> None:
    session.rollback()
    for table in ("usage_rollup", "account_change", "usage_daily", "ticket", "note", "nps_response",
                  "health_snapshot", "stage_transition", "account"):
        session.execute(text(f"DELETE FROM {table}"))
    session.commit()


def _accounts(session: Session, n: int, rng: random.Random) -> list[int]:
    rows = [
        Account(external_id=f"R{i}", name=f"Acc {i}", name_key=f"acc {i}", seats=rng.choice([0, 5, 20]),
                status=rng.choice(["active", "active", "churned"]),
                renewal_date=AS_OF + timedelta(days=rng.randint(-10, 200)),
                contract_start=AS_OF - timedelta(days=rng.randint(10, 700)),
                last_usage_date=rng.choice([None, AS_OF + timedelta(days=3)]))
        for i in range(n)
    ]
    session.add_all(rows)
    session.commit()
    return [int(a.id) for a in rows if a.id is not None]


def _batch(ids: list[int], rng: random.Random, size: int) -> list[dict[str, Any]]:
    seen: dict[tuple[int, str, date], dict[str, Any]] = {}
    for _ in range(size):
        key = (rng.choice(ids), rng.choice(FEATURES), AS_OF - timedelta(days=rng.randint(-3, 110)))
        seen[key] = {"account_id": key[0], "feature": key[1], "day": key[2], "active_users": rng.randint(0, 30),
                     "logins": rng.choice([0, 0, 1, 4]), "events": rng.randint(0, 500)}
    return list(seen.values())


def _add(session: Session, rows: list[dict[str, Any]]) -> None:
    """The ingest's write: counts added to the stored ones."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    table = UsageDaily.__table__  # type: ignore[attr-defined]
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(index_elements=["account_id", "feature", "day"], set_={
        c: table.c[c] + stmt.excluded[c] for c in ("active_users", "logins", "events")})
    session.connection().execute(stmt, rows)


def _rollup_rows(session: Session) -> pd.DataFrame:
    frame = rollups.read(session.connection()).sort_values("account_id").reset_index(drop=True)
    users, logins, events = rollups.decode(frame["days"].tolist())
    frame["days"] = [tuple(u) + tuple(lg) + tuple(e) for u, lg, e in zip(users, logins, events, strict=True)]
    return frame


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), batches=st.integers(1, 6), added=st.lists(st.booleans(), min_size=6,
                                                                                max_size=6))
def test_rollups_kept_batch_by_batch_equal_a_rebuild(session: Session, seed: int, batches: int,
                                                      added: list[bool]) -> None:
    _clear(session)
    rng = random.Random(seed)
    ids = _accounts(session, 6, rng)
    for b in range(batches):
        rows = _batch(ids, rng, rng.randint(1, 60))
        if added[b]:
            _add(session, rows)
        else:
            upsert(session, UsageDaily, rows, conflict=["account_id", "feature", "day"],
                   update=["active_users", "logins", "events"])
        rollups.apply_usage(session, rows, added=added[b])
    kept = _rollup_rows(session)
    rollups.rebuild(session.connection())
    rebuilt = _rollup_rows(session)
    pd.testing.assert_frame_equal(kept, rebuilt)
    # every account that got usage is marked for the incremental recompute
    marked = {int(a) for a in session.execute(text("SELECT account_id FROM account_change")).scalars()}
    assert {int(a) for a in kept["account_id"]} <= marked
    session.rollback()


def _portfolio(session: Session, rng: random.Random, n: int) -> list[int]:
    ids = _accounts(session, n, rng)
    rows = _batch(ids, rng, 40 * n)
    upsert(session, UsageDaily, rows, conflict=["account_id", "feature", "day"])
    rollups.apply_usage(session, rows)
    for i in ids:
        for t in range(rng.randint(0, 3)):
            opened = datetime(2025, 3, 31) - timedelta(days=rng.randint(0, 80))
            session.add(Ticket(account_id=i, ticket_id=f"T{i}-{t}", priority=rng.choice(["low", "high", "urgent"]),
                               status=rng.choice(["open", "closed"]), opened_at=opened))
        for k in range(rng.randint(0, 2)):
            session.add(NpsResponse(account_id=i, contact_key=f"c{k}", score=rng.randint(0, 10),
                                    responded_at=datetime(2025, 3, 31) - timedelta(days=rng.randint(0, 120))))
        if rng.random() < 0.5:
            written = datetime(2025, 3, 30) - timedelta(days=rng.randint(0, 40))
            session.add(Note(account_id=i, text="call", created_at=written))
    session.commit()
    return ids


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), back=st.integers(0, 1))
def test_signals_from_rollups_equal_signals_from_raw_rows(session: Session, seed: int, back: int) -> None:
    _clear(session)
    rng = random.Random(seed)
    ids = _portfolio(session, rng, 12)
    # usage reaches 3 days past AS_OF, so a day up to one day before it is within the roll-ups' 4 days of slack
    as_of = AS_OF - timedelta(days=back)
    raw = build_signals(session, as_of, source="raw")
    rolled = build_signals(session, as_of, source="rollups")
    pd.testing.assert_frame_equal(rolled, raw)
    subset = sorted(rng.sample(ids, 4))
    pd.testing.assert_frame_equal(build_signals(session, as_of, accounts=subset, source="rollups"), raw.loc[subset])
    pd.testing.assert_frame_equal(build_signals(session, as_of, accounts=subset, source="raw"), raw.loc[subset])


def test_a_day_further_back_than_the_rollups_reach_reads_the_raw_rows(session: Session) -> None:
    _clear(session)
    _portfolio(session, random.Random(3), 5)
    old = AS_OF - timedelta(days=30)
    with pytest.raises(ValueError, match="roll-ups do not reach back"):
        build_signals(session, old, source="rollups")
    pd.testing.assert_frame_equal(build_signals(session, old), build_signals(session, old, source="raw"))


def test_orm_writes_of_usage_keep_the_rollups_in_step(session: Session) -> None:
    _clear(session)
    [acct] = _accounts(session, 1, random.Random(1))
    session.add(UsageDaily(account_id=acct, day=AS_OF, active_users=3, logins=1, events=9))
    session.commit()
    [row] = rollups.read(session.connection()).itertuples()
    users, logins, events = rollups.decode([row.days])
    assert rollups.day_of(row.end_day) == AS_OF
    assert (users[0, -1], logins[0, -1], events[0, -1]) == (3, 1, 9)
    assert np.all(users[0, :-1] == rollups.ABSENT)


def test_migration_fills_the_rollups_and_rebuild_command_agrees(engine: Engine, tmp_path: Any) -> None:
    with Session(engine) as session:
        _clear(session)
        _portfolio(session, random.Random(5), 4)
        before = _rollup_rows(session)
        session.execute(text("DELETE FROM usage_rollup"))
        session.commit()
    from typer.testing import CliRunner

    from adapters.cli.app import app
    from lifecycle.store.settings import get_settings

    get_settings.cache_clear()  # the command reads the settings (and so the database URL) from the environment
    try:
        result = CliRunner().invoke(app, ["rebuild-rollups"], env={
            "CSBOT_DATABASE_URL": engine.url.render_as_string(hide_password=False)})
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "4 account" in result.output
    with Session(engine) as session:
        pd.testing.assert_frame_equal(_rollup_rows(session), before)
