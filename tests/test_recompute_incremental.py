"""The incremental recompute: which changes mark an account, and that recomputing only the marked accounts leaves
the database exactly as a full recompute would, on random portfolios with random changes."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlmodel import Session

from lifecycle.recompute import read_marks, recompute, recompute_changed
from lifecycle.scoring import rollups
from lifecycle.scoring.health import default_scorecard
from lifecycle.scoring.stages import load_stage_machine, move_stage
from lifecycle.store.db import upsert
from lifecycle.store.models import Account, Note, NpsResponse, Ticket, UsageDaily

AS_OF = date(2025, 3, 31)
NOW = datetime(2025, 3, 31, 12)
SCORECARD, MACHINE = default_scorecard(), load_stage_machine()
TABLES = ("usage_rollup", "account_change", "recompute_state", "usage_daily", "ticket", "note", "nps_response",
          "health_snapshot", "stage_transition", "alert", "account")


def _clear(session: Session) -> None:
    session.rollback()
    for table in TABLES:
        session.execute(text(f"DELETE FROM {table}"))
    session.commit()


def _usage(session: Session, rng: random.Random, ids: list[int], n: int, newest: int = 0) -> set[int]:
    rows: dict[tuple[int, str, date], dict[str, Any]] = {}
    for _ in range(n):
        key = (rng.choice(ids), rng.choice(["", "", "reports"]), AS_OF - timedelta(days=rng.randint(newest, 70)))
        seats_like = rng.randint(0, 25)
        rows[key] = {"account_id": key[0], "feature": key[1], "day": key[2], "active_users": seats_like,
                     "logins": rng.choice([0, 1, 3]), "events": rng.randint(0, 400)}
    batch = list(rows.values())
    upsert(session, UsageDaily, batch, conflict=["account_id", "feature", "day"])
    rollups.apply_usage(session, batch)
    return {key[0] for key in rows}


def _account(i: int, rng: random.Random) -> Account:
    return Account(external_id=f"P{i}", name=f"Acc {i}", name_key=f"acc {i}", seats=rng.choice([5, 10, 20]),
                   stage=rng.choice(["onboarding", "adoption", "expansion"]),
                   segment=rng.choice(["smb", "enterprise"]), arr=1000.0 * rng.randint(1, 50),
                   contract_start=AS_OF - timedelta(days=rng.randint(20, 600)),
                   renewal_date=AS_OF + timedelta(days=rng.randint(5, 300)))


def _portfolio(session: Session, rng: random.Random, n: int) -> list[int]:
    accounts = [_account(i, rng) for i in range(n)]
    session.add_all(accounts)
    session.commit()
    ids = [int(a.id) for a in accounts if a.id is not None]
    _usage(session, rng, ids, 30 * n)
    for i in ids:
        for t in range(rng.randint(0, 2)):
            session.add(Ticket(account_id=i, ticket_id=f"T{i}-{t}", priority=rng.choice(["normal", "high", "urgent"]),
                               opened_at=NOW - timedelta(days=rng.randint(0, 50))))
        if rng.random() < 0.5:
            session.add(NpsResponse(account_id=i, contact_key="c", score=rng.randint(0, 10),
                                    responded_at=NOW - timedelta(days=rng.randint(1, 80))))
    session.commit()
    return ids


def _change(session: Session, rng: random.Random, ids: list[int]) -> set[int]:
    """A few random changes of every kind; returns the accounts they touched."""
    touched: set[int] = set()
    some = rng.sample(ids, 3)
    touched |= _usage(session, rng, some, 12, newest=0)
    a = rng.choice(ids)
    session.add(Ticket(account_id=a, ticket_id=f"new-{a}", priority="urgent", opened_at=NOW - timedelta(hours=2)))
    b = rng.choice(ids)
    session.add(NpsResponse(account_id=b, contact_key="late", score=rng.randint(0, 10), responded_at=NOW))
    c = rng.choice(ids)
    session.add(Note(account_id=c, text="QBR held", created_at=NOW))
    d = session.get(Account, rng.choice(ids))
    assert d is not None
    d.seats, d.renewal_date = d.seats * 3, AS_OF + timedelta(days=20)
    e = session.get(Account, rng.choice(ids))
    assert e is not None
    target = "renewal" if e.stage != "renewal" else "adoption"
    move_stage(session, e, target, reason="agreed on the call", actor_id=None, machine=MACHINE, at=NOW)
    new = _account(len(ids) + 1, rng)
    session.add(new)
    session.flush()
    assert new.id is not None
    _usage(session, rng, [new.id], 15, newest=1)
    session.commit()
    return touched | {a, b, c, int(d.id or 0), int(e.id or 0), new.id}


def _state(session: Session) -> dict[str, Any]:
    accounts = session.execute(text(
        "SELECT id, health_score, health_grade, health_at, stage, stage_pinned FROM account ORDER BY id")).all()
    snapshots = session.execute(text(
        "SELECT account_id, day, score, grade, measures FROM health_snapshot ORDER BY account_id, day")).all()
    moves = session.execute(text(
        "SELECT account_id, from_stage, to_stage FROM stage_transition ORDER BY id")).all()
    return {"accounts": [tuple(r) for r in accounts], "snapshots": [tuple(r) for r in snapshots],
            "moves": [tuple(r) for r in moves]}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_incremental_recompute_equals_a_full_recompute(session: Session, seed: int) -> None:
    _clear(session)
    rng = random.Random(seed)
    ids = _portfolio(session, rng, 14)
    first = recompute_changed(session, as_of=AS_OF, scorecard=SCORECARD, machine=MACHINE, with_insight=False)
    session.commit()
    assert first.mode == "full"
    # The stage moves of that run are marked: settle them as a second full run would.
    recompute(session, as_of=AS_OF, scorecard=SCORECARD, machine=MACHINE, with_insight=False)
    session.commit()
    settled = {a for a, _ in read_marks(session)}

    touched = _change(session, rng, ids)
    marked = {a for a, _ in read_marks(session)}
    assert touched <= marked

    # Both runs start from the same state: the full one inside a savepoint that is then rolled back.
    nested = session.begin_nested()
    recompute(session, as_of=AS_OF, scorecard=SCORECARD, machine=MACHINE, with_insight=False)
    full = _state(session)
    nested.rollback()

    summary = recompute_changed(session, as_of=AS_OF, scorecard=SCORECARD, machine=MACHINE, with_insight=False)
    assert summary.mode == "incremental"
    assert summary.accounts == len(marked) < len(ids) + 1
    incremental = _state(session)
    session.commit()
    for part in ("accounts", "snapshots", "moves"):
        assert incremental[part] == full[part], [
            (x, y) for x, y in zip(incremental[part], full[part], strict=False) if x != y][:5]
    assert settled <= marked


def test_each_kind_of_change_marks_its_account_and_a_run_clears_what_it_saw(session: Session) -> None:
    _clear(session)
    rng = random.Random(11)
    ids = _portfolio(session, rng, 6)
    recompute(session, as_of=AS_OF, scorecard=SCORECARD, machine=MACHINE, with_insight=False)
    session.commit()
    recompute(session, as_of=AS_OF, scorecard=SCORECARD, machine=MACHINE, with_insight=False)
    session.commit()
    session.execute(text("DELETE FROM account_change"))
    session.commit()

    def marked() -> set[int]:
        return {a for a, _ in read_marks(session)}

    a, b, c, d, e = ids[:5]
    session.add(Ticket(account_id=a, ticket_id="x", opened_at=NOW))
    session.add(NpsResponse(account_id=b, contact_key="z", score=3, responded_at=NOW))
    session.add(Note(account_id=c, text="hi", created_at=NOW))
    session.commit()
    assert marked() == {a, b, c}
    account = session.get(Account, d)
    assert account is not None
    account.renewal_date = AS_OF + timedelta(days=10)
    session.commit()
    assert marked() == {a, b, c, d}
    # health written by the recompute marks nothing
    session.execute(text("UPDATE account SET health_score = 1, churn_probability = 0.5 WHERE id = :e"), {"e": e})
    session.commit()
    assert marked() == {a, b, c, d}

    summary = recompute_changed(session, as_of=AS_OF, scorecard=SCORECARD, machine=MACHINE, with_insight=False)
    session.commit()
    assert (summary.mode, summary.accounts) == ("incremental", 4)
    assert marked() - {a, b, c, d} == set()  # only the run's own stage moves, if any, stay marked
    nothing = recompute_changed(session, as_of=AS_OF, scorecard=SCORECARD, machine=MACHINE, with_insight=False)
    session.commit()
    assert nothing.mode == "incremental"
    # A new day recomputes every account.
    tomorrow = recompute_changed(session, as_of=AS_OF + timedelta(days=1), scorecard=SCORECARD, machine=MACHINE,
                                 with_insight=False)
    session.commit()
    assert (tomorrow.mode, tomorrow.accounts) == ("full", len(ids))


def test_a_change_made_during_a_run_stays_marked(session: Session) -> None:
    _clear(session)
    ids = _portfolio(session, random.Random(2), 3)
    marks = read_marks(session)
    # The account changes again after the run read its mark (its version goes up): clearing keeps it.
    session.add(Note(account_id=ids[0], text="later", created_at=NOW))
    session.flush()
    from lifecycle.recompute import clear_marks

    clear_marks(session, marks)
    session.commit()
    assert {a for a, _ in read_marks(session)} == {ids[0]}
