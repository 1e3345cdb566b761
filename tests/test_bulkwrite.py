"""The bulk write helpers (lifecycle/store/bulkwrite.py) on SQLite and, with `--db postgres`, on PostgreSQL: values
stored as the ORM stores them, the caller's transaction respected, and a whole recompute storing exactly the rows that
per-row statements store."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, Table, bindparam, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from lifecycle.insight.churn import ChurnSettings, InsightConfig
from lifecycle.intake.demo import seed_demo
from lifecycle.recompute import recompute
from lifecycle.scoring.health import default_scorecard
from lifecycle.scoring.stages import load_stage_machine
from lifecycle.store import bulkwrite, models
from lifecycle.store.bulkwrite import delete_rows, insert_rows, update_rows, upsert_rows
from lifecycle.store.db import make_engine
from lifecycle.store.models import Account, AccountCardFact, AccountChange, HealthSnapshot, StageTransition

TODAY = date(2026, 11, 23)
TRICKY = "tab\there\nnew line\\back\\slash \\N \"quoted\" ünï"
ACCOUNT: Table = Account.__table__  # type: ignore[attr-defined]


def _accounts(session: Session, n: int) -> list[int]:
    rows = [Account(external_id=f"x{i}", name=f"Account {i}", name_key=f"account {i}") for i in range(n)]
    session.add_all(rows)
    session.flush()
    return [int(a.id) for a in rows if a.id is not None]


def _reread(session: Session, account_id: int) -> Account:
    session.expire_all()
    account = session.get(Account, account_id)
    assert account is not None
    return account


@pytest.fixture(params=["update_from", "executemany"])
def update_path(request: pytest.FixtureRequest, session: Session, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both SQLite paths of `update_rows` (UPDATE … FROM, and the executemany kept for SQLite before 3.33)."""
    if request.param == "executemany":
        if session.get_bind().dialect.name != "sqlite":
            pytest.skip("the executemany fallback is SQLite's")
        monkeypatch.setattr(bulkwrite, "_sqlite_has_update_from", lambda: False)
    return str(request.param)


def test_update_rows_round_trips_every_kind_of_value(session: Session, update_path: str) -> None:
    first, second = _accounts(session, 2)
    since = datetime(2026, 3, 4, 5, 6, 7, 891011)
    reasons = [{"feature": "logins", "direction": "down", "weight": 0.25, "note": TRICKY}]
    columns = ("name", "health_score", "health_at", "stage_since", "stage_pinned", "churn_reasons", "churn_probability")
    matched = update_rows(session, ACCOUNT, ("id",), columns, [
        (first, TRICKY, 71.5, date(2026, 11, 23), since, True, reasons, float("nan")),
        (second, "plain", float("nan"), None, datetime(2026, 1, 1), False, None, None),
    ])
    assert matched == 2
    a, b = _reread(session, first), _reread(session, second)
    assert (a.name, a.health_score, a.health_at, a.stage_since, a.stage_pinned, a.churn_reasons,
            a.churn_probability) == (TRICKY, 71.5, date(2026, 11, 23), since, True, reasons, None)
    assert (b.name, b.health_score, b.health_at, b.stage_since, b.stage_pinned, b.churn_probability) == (
        "plain", None, None, datetime(2026, 1, 1), False, None)


def test_update_of_a_missing_key_changes_nothing(session: Session, update_path: str) -> None:
    (only,) = _accounts(session, 1)
    before = _reread(session, only).model_dump()
    assert update_rows(session, ACCOUNT, ("id",), ("health_grade",), [(only + 1000, "red")]) == 0
    assert update_rows(session, ACCOUNT, ("id",), ("health_grade",), []) == 0
    assert _reread(session, only).model_dump() == before


def test_insert_rows_round_trips_and_takes_the_defaults(session: Session) -> None:
    first, second = _accounts(session, 2)
    at = datetime(2026, 11, 23, 0, 0, 0, 5)
    table = StageTransition.__table__  # type: ignore[attr-defined]
    columns = ("account_id", "from_stage", "to_stage", "at", "reason", "source", "actor_id")
    assert insert_rows(session, table, columns, [
        (first, None, "adoption", at, TRICKY, "rule:x", None), (second, "adoption", "risk", at, "", "rule:y", None),
    ]) == 2
    facts = AccountCardFact.__table__  # type: ignore[attr-defined]
    kpis = [["arr", 1200.5, TRICKY], ["nps", None, ""]]
    insert_rows(session, facts, ("account_id", "as_of", "stamp", "kpis", "computed_at"),
                [(first, TODAY, "s1", kpis, at), (second, TODAY, "s2", [], at)])
    session.expire_all()
    rows = session.execute(select(StageTransition).order_by(StageTransition.account_id)).scalars().all()
    assert [(r.account_id, r.from_stage, r.to_stage, r.at, r.reason, r.source) for r in rows] == [
        (first, None, "adoption", at, TRICKY, "rule:x"), (second, "adoption", "risk", at, "", "rule:y")]
    assert all(r.id is not None for r in rows)
    fact = session.get(AccountCardFact, first)
    assert fact is not None and (fact.as_of, fact.kpis, fact.computed_at) == (TODAY, kpis, at)


def test_upsert_rows_stores_json_text_and_updates_on_conflict(session: Session) -> None:
    (only,) = _accounts(session, 1)
    table = HealthSnapshot.__table__  # type: ignore[attr-defined]
    columns = ("account_id", "day", "score", "grade", "measures", "scorecard_version", "computed_at")
    update = columns[2:]
    at = datetime(2026, 11, 23, 1, 2, 3)
    upsert_rows(session, table, columns, [(only, TODAY, 50.0, "yellow", {"note": TRICKY}, "v1", at)],
                conflict=("account_id", "day"), update=update)
    upsert_rows(session, table, columns, [(only, TODAY, 80.0, "green", json.dumps({"x": [1, None]}), "v2", at)],
                conflict=("account_id", "day"), update=update)
    session.expire_all()
    (snap,) = session.execute(select(HealthSnapshot)).scalars().all()
    assert (snap.day, snap.score, snap.grade, snap.measures, snap.scorecard_version, snap.computed_at) == (
        TODAY, 80.0, "green", {"x": [1, None]}, "v2", at)


def test_delete_rows_deletes_only_where_every_key_still_matches(session: Session) -> None:
    ids = _accounts(session, 3)  # the account trigger marks each one, version 1
    table = AccountChange.__table__  # type: ignore[attr-defined]
    session.execute(update(table).where(table.c.account_id == ids[1]).values(version=2))  # changed again since
    assert delete_rows(session, table, ("account_id", "version"), [(a, 1) for a in ids] + [(999_999, 1)]) == 2
    left = session.execute(select(table.c.account_id, table.c.version)).all()
    assert [tuple(r) for r in left] == [(ids[1], 2)]


def test_nothing_is_written_when_the_transaction_rolls_back(engine: Engine) -> None:
    with Session(engine) as session:
        ids = _accounts(session, 2)
        session.commit()
    with Session(engine) as session:
        update_rows(session, ACCOUNT, ("id",), ("health_grade",), [(a, "red") for a in ids])
        insert_rows(session, StageTransition.__table__,  # type: ignore[attr-defined]
                    ("account_id", "to_stage", "at", "reason", "source"),
                    [(ids[0], "risk", datetime(2026, 1, 1), "", "rule:x")])
        delete_rows(session, AccountChange.__table__, ("account_id", "version"),  # type: ignore[attr-defined]
                    [(a, 1) for a in ids])
        session.rollback()
    with Session(engine) as session:
        assert {a.health_grade for a in session.execute(select(Account)).scalars()} == {None}
        assert session.execute(select(StageTransition)).first() is None
        assert len(session.execute(select(AccountChange)).all()) == 2


# ------------------------------------------------------------------------------- a recompute, bulk vs per-row


def _per_row_update(session: Session, table: Table, key_columns: Sequence[str], columns: Sequence[str],
                    rows: Sequence[tuple[Any, ...]]) -> int:
    params = [{f"b_{c}": _plain(table, c, v) for c, v in zip([*key_columns, *columns], row, strict=True)}
              for row in rows]
    if params:
        session.execute(update(table).where(*(table.c[k] == bindparam(f"b_{k}") for k in key_columns))
                        .values({c: bindparam(f"b_{c}") for c in columns}), params)
    return len(params)


def _per_row_insert(session: Session, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> int:
    if rows:
        session.execute(insert(table), [{c: _plain(table, c, v) for c, v in zip(columns, r, strict=True)}
                                        for r in rows])
    return len(rows)


def _per_row_delete(session: Session, table: Table, key_columns: Sequence[str],
                    rows: Sequence[tuple[Any, ...]]) -> int:
    for row in rows:
        session.execute(delete(table).where(*(table.c[k] == v for k, v in zip(key_columns, row, strict=True))))
    return len(rows)


def _per_row_upsert(session: Session, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]], *,
                    conflict: Sequence[str], update: Sequence[str]) -> int:
    make = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = make(table)
    stmt = stmt.on_conflict_do_update(index_elements=list(conflict), set_={c: stmt.excluded[c] for c in update})
    if rows:
        session.execute(stmt, [{c: _plain(table, c, v) for c, v in zip(columns, r, strict=True)} for r in rows])
    return len(rows)


def _plain(table: Table, column: str, value: Any) -> Any:
    """What the ORM is given: JSON as Python values (the bulk path may pass text already encoded), NaN as None."""
    if isinstance(value, str) and type(table.c[column].type).__name__ == "JSON":
        return json.loads(value)
    if isinstance(value, float) and value != value:
        return None
    return value


_RECOMPUTE_TABLES = {
    "account": "id", "health_snapshot": "account_id, day", "stage_transition": "id", "account_change": "account_id",
    "cohort": "id", "account_card_fact": "account_id",
}


def _stored(url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {t: [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {t} ORDER BY {order}").all()]
                    for t, order in _RECOMPUTE_TABLES.items()}
    finally:
        engine.dispose()


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every `utcnow` of the lifecycle modules answers one instant, so two runs stamp the same times."""
    instant, original = datetime(2026, 12, 8, 9, 30, 15, 123456), models.utcnow
    for name, module in list(sys.modules.items()):
        if name.startswith("lifecycle") and getattr(module, "utcnow", None) is original:
            monkeypatch.setattr(module, "utcnow", lambda: instant)
    yield


@pytest.fixture
def clone(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str, str], str]:
    """A copy of a database (SQLite file or PostgreSQL template copy) under a new name."""
    numbers = itertools.count(1)

    def copy(url: str, name: str) -> str:
        if url.startswith("sqlite"):
            target = tmp_path / f"{name}.db"
            shutil.copy(url.removeprefix("sqlite:///"), target)
            return f"sqlite:///{target}"
        server = request.getfixturevalue("pg_server")
        db = f"{name}_{next(numbers)}_{id(tmp_path) % 100_000}"
        request.addfinalizer(lambda: server.drop_database(db))
        return str(server.create_database(db, template=url.rsplit("/", 1)[1]))

    return copy


def _recompute(url: str) -> str:
    engine = make_engine(url)
    insight = InsightConfig(churn=ChurnSettings(max_observations=12))
    try:
        with Session(engine) as session:
            summary = recompute(session, as_of=TODAY, scorecard=default_scorecard(), machine=load_stage_machine(),
                                insight=insight)
            session.commit()
            # A second run of the day: upserts over the day's snapshots, no moves, the facts replaced.
            recompute(session, as_of=TODAY, scorecard=default_scorecard(), machine=load_stage_machine(),
                      insight=insight)
            session.commit()
        return re.sub(r" in [0-9.]+ s|[0-9]{14}-", "", summary.insight)  # times and model versions
    finally:
        engine.dispose()


@pytest.mark.parametrize("seed", [5, 23])
def test_a_full_recompute_stores_the_same_rows_as_per_row_statements(
    new_db_url: Callable[..., str], clone: Callable[[str, str], str], monkeypatch: pytest.MonkeyPatch,
    frozen_clock: None, seed: int,
) -> None:
    source = new_db_url(f"portfolio{seed}")
    engine = make_engine(source)
    with Session(engine) as session:
        seed_demo(session, accounts=70, seed=seed, today=TODAY)
        # Awkward text for COPY in a column the recompute copies nowhere but that it reads back in every row.
        session.execute(update(ACCOUNT).where(ACCOUNT.c.id % 7 == 0).values(churn_reason=TRICKY))
        session.commit()
    engine.dispose()
    bulk, per_row = clone(source, f"bulk{seed}"), clone(source, f"per_row{seed}")

    note = _recompute(bulk)
    assert "scored" in note and "cohorts" in note and "card facts" in note, note
    from lifecycle import recompute as recompute_module
    from lifecycle.insight import churn, segments
    from lifecycle.reports import cardfacts
    from lifecycle.scoring import health, stages

    for module in (health, stages, churn, segments, cardfacts, recompute_module):
        for name, reference in (("update_rows", _per_row_update), ("insert_rows", _per_row_insert),
                                ("delete_rows", _per_row_delete), ("upsert_rows", _per_row_upsert)):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, reference)
    assert _recompute(per_row) == note

    expected, got = _stored(per_row), _stored(bulk)
    assert expected["stage_transition"] and expected["health_snapshot"] and expected["account_card_fact"]
    assert any(r for r in expected["account"]), "accounts"
    for table in _RECOMPUTE_TABLES:
        assert len(got[table]) == len(expected[table]), table
        differences = [(table, i, [(j, a, b) for j, (a, b) in enumerate(zip(g, e, strict=True)) if a != b])
                       for i, (g, e) in enumerate(zip(got[table], expected[table], strict=True)) if g != e]
        assert not differences, differences[:3]
