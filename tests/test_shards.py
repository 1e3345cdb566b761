"""The sharded nightly recompute (`lifecycle.shards`): planning, claiming with leases, the whole-portfolio step run
once, and results equal to a plain full recompute; the nightly job on one shard (SQLite) and on several
(PostgreSQL), with a failed shard reported in its result.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from pgserver import PostgresServer
from sqlalchemy import Engine, text
from sqlmodel import Session

from bot.push.jobs import run_job
from lifecycle import shards
from lifecycle.intake.demo import seed_demo
from lifecycle.recompute import recompute
from lifecycle.scoring.health import default_scorecard
from lifecycle.scoring.stages import load_stage_machine
from lifecycle.store.db import make_engine, session_scope
from lifecycle.store.models import utcnow
from lifecycle.store.settings import load_settings

TODAY = date(2025, 3, 14)
NIGHTLY_AT = datetime(2025, 3, 14, 2, 0)
ACCOUNTS = 90
SCORECARD, MACHINE = default_scorecard(), load_stage_machine()


def _seed(engine: Engine) -> None:
    """The demo portfolio, scored once for yesterday (so tonight's run backfills nothing)."""
    with Session(engine) as s:
        seed_demo(s, accounts=ACCOUNTS, today=TODAY)
        s.commit()
    with session_scope(engine) as s:
        recompute(s, as_of=TODAY - timedelta(days=1), scorecard=SCORECARD, machine=MACHINE, backfill=False,
                  with_insight=False)


def _state(engine: Engine) -> dict[str, Any]:
    """What a recompute stores: account health and stage, the snapshots, the stage moves."""
    with engine.connect() as conn:
        accounts = conn.execute(text(
            "SELECT id, health_score, health_grade, health_at, stage, stage_pinned FROM account ORDER BY id")).all()
        snapshots = conn.execute(text(
            "SELECT account_id, day, score, grade, measures FROM health_snapshot ORDER BY account_id, day")).all()
        moves = conn.execute(text(
            "SELECT account_id, from_stage, to_stage FROM stage_transition ORDER BY account_id, id")).all()
        marks = conn.execute(text("SELECT COUNT(*) FROM account_change")).scalar_one()
    return {"accounts": [tuple(r) for r in accounts], "snapshots": [tuple(r) for r in snapshots],
            "moves": [tuple(r) for r in moves], "marks": marks}


def _full(engine: Engine) -> dict[str, Any]:
    with session_scope(engine) as s:
        recompute(s, as_of=TODAY, scorecard=SCORECARD, machine=MACHINE, with_insight=False)
    return _state(engine)


def _assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    for part in ("accounts", "snapshots", "moves", "marks"):
        assert got[part] == want[part], part


def _shards(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT shard, lo, hi, status, claimed_by, attempts, accounts, error FROM recompute_shard "
            "ORDER BY shard"))]


@pytest.fixture
def other_pg_url(pg_server: PostgresServer, _pg_template: str) -> Iterator[str]:
    """A second fresh PostgreSQL database (the plain full recompute's, to compare with)."""
    url = pg_server.create_database("csbot_shards_other", template=_pg_template)
    yield url
    pg_server.drop_database("csbot_shards_other")


def _two(url: str, other: str) -> Iterator[tuple[Engine, Engine]]:
    engines = make_engine(url), make_engine(other)
    try:
        for e in engines:
            _seed(e)
        yield engines
    finally:
        for e in engines:
            e.dispose()


@pytest.fixture
def seeded_pair(pg_url: str, other_pg_url: str) -> Iterator[tuple[Engine, Engine]]:
    yield from _two(pg_url, other_pg_url)


@pytest.fixture
def seeded(pg_engine: Engine) -> Engine:
    _seed(pg_engine)
    return pg_engine


def _plan(engine: Engine, n: int = 4) -> shards.Plan:
    with session_scope(engine) as s:
        return shards.plan(s, as_of=TODAY, scorecard=SCORECARD, machine=MACHINE, shards=n)


# --- one shard, and several on one process (either backend) ---------------------------------------------------------


def test_the_shard_count_defaults_to_one_on_sqlite_and_eight_on_postgresql() -> None:
    assert shards.shard_count(None, "sqlite") == 1
    assert shards.shard_count(None, "postgresql") == 8
    assert shards.shard_count(3, "sqlite") == 3
    assert load_settings(database_url="sqlite://").recompute_shards is None


def test_the_nightly_on_one_shard_is_the_plain_full_recompute(
    engine: Engine, db_url: str, new_db_url: Callable[..., str]
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("the one-shard default is SQLite's")
    _seed(engine)
    result = run_job("nightly", engine, load_settings(database_url=db_url), now=NIGHTLY_AT)
    assert result.status == "ok", result.describe()
    assert result.step("recompute").counts["accounts"] == ACCOUNTS
    assert "shards" not in result.step("recompute").counts
    assert _shards(engine) == []  # no shard rows: one process, one transaction
    reference = make_engine(new_db_url("reference"))
    try:
        _seed(reference)
        want = _full(reference)
    finally:
        reference.dispose()
    _assert_same(_state(engine), want)


def test_one_process_working_every_shard_equals_a_full_recompute(
    engine: Engine, new_db_url: Callable[..., str]
) -> None:
    _seed(engine)
    run = shards.nightly_recompute(engine, as_of=TODAY, scorecard=SCORECARD, machine=MACHINE, shards=4,
                                   with_insight=False)
    assert run.problem() is None and run.mode == "sharded"
    assert run.accounts == ACCOUNTS and len(run.status.shards) == 4
    assert run.signals is not None and len(run.signals) == ACCOUNTS
    reference = make_engine(new_db_url("reference"))
    try:
        _seed(reference)
        want = _full(reference)
    finally:
        reference.dispose()
    _assert_same(_state(engine), want)
    with engine.connect() as conn:
        state = conn.execute(text("SELECT as_of, digest FROM recompute_state")).one()
    assert str(state[0]) == TODAY.isoformat()

    # The same day again: the run is complete, so only what changed since is recomputed.
    again = shards.nightly_recompute(engine, as_of=TODAY, scorecard=SCORECARD, machine=MACHINE, shards=4,
                                     with_insight=False)
    assert again.mode == "incremental" and again.problem() is None
    assert len(_shards(engine)) == 5  # four ranges and the whole-portfolio step, planned once


# --- PostgreSQL: several workers -------------------------------------------------------------------------------------


def test_planning_is_idempotent_and_the_ranges_cover_every_account(seeded: Engine) -> None:
    with ThreadPoolExecutor(4) as pool:
        plans = list(pool.map(lambda _: _plan(seeded), range(4)))
    assert sorted(p.created for p in plans) == [False, False, False, True]
    assert {p.key for p in plans} == {plans[0].key} and {p.shards for p in plans} == {4}
    rows = _shards(seeded)
    assert [r[0] for r in rows] == [-1, 0, 1, 2, 3]
    ranges = [(r[1], r[2]) for r in rows[1:]]
    assert ranges[0][0] == 0 and ranges[-1][1] == shards.NO_UPPER
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    with seeded.connect() as conn:
        sizes = [conn.execute(text("SELECT COUNT(*) FROM account WHERE status = 'active' AND id >= :lo AND id < :hi"),
                              {"lo": lo, "hi": hi}).scalar_one() for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1  # about equal: NTILE over the active ids


def test_two_concurrent_workers_process_every_shard_once_and_equal_a_full_recompute(
    seeded_pair: tuple[Engine, Engine],
) -> None:
    sharded, plain = seeded_pair
    plan = _plan(sharded, 6)
    barrier = threading.Barrier(2)

    def worker(name: str) -> list[shards.ShardResult]:
        barrier.wait()
        return shards.work(sharded, plan.key, scorecard=SCORECARD, machine=MACHINE, me=name,
                           lock=threading.Lock())

    with ThreadPoolExecutor(2) as pool:
        done = [r for results in pool.map(worker, ["w1", "w2"]) for r in results]
    assert sorted(r.shard for r in done) == list(range(6))  # each shard once, by one of the two
    assert all(r.status == "done" for r in done)
    rows = _shards(sharded)[1:]
    assert all(r[3] == "done" and r[5] == 1 and r[4] in ("w1", "w2") for r in rows)
    assert sum(r[6] for r in rows) == ACCOUNTS
    finished = shards.finish(sharded, plan.key, as_of=TODAY, scorecard=SCORECARD, machine=MACHINE,
                             with_insight=False)
    assert finished is not None
    _assert_same(_state(sharded), _full(plain))


def test_a_lapsed_lease_is_claimed_again_and_gives_up_after_the_last_attempt(seeded: Engine) -> None:
    plan = _plan(seeded, 2)
    past = utcnow() - timedelta(hours=1)
    # A worker claims shard 0 and dies: its lease lapses.
    dead = shards.claim(seeded, plan.key, me="dead:1", lease=timedelta(minutes=1), now=past)
    assert dead is not None and dead.shard == 0 and dead.attempt == 1
    results = shards.work(seeded, plan.key, scorecard=SCORECARD, machine=MACHINE, me="alive:2",
                          lock=threading.Lock())
    assert sorted(r.shard for r in results) == [0, 1]
    rows = {r[0]: r for r in _shards(seeded)}
    assert rows[0][3:6] == ("done", "alive:2", 2)
    # The dead worker's late finish does not count: the shard is someone else's now.
    assert shards.run_shard(seeded, dead, scorecard=SCORECARD, machine=MACHINE, me="dead:1").status == "lost"

    # A shard whose lease lapsed on its last attempt is failed, with the reason.
    with session_scope(seeded) as s:
        s.execute(text("UPDATE recompute_shard SET status = 'running', claimed_by = 'dead:3', attempts = 3, "
                       "lease_until = :past WHERE shard = 1"), {"past": past})
    assert shards.claim(seeded, plan.key, me="alive:2") is None
    failed = shards.run_status(seeded, plan.key).failed
    assert [(f.shard, f.status) for f in failed] == [(1, "failed")]
    assert failed[0].error == "gave up after 3 attempts: the lease of dead:3 lapsed"


def test_the_whole_portfolio_step_runs_once_and_only_after_every_shard(seeded: Engine) -> None:
    plan = _plan(seeded, 3)
    assert shards.finish(seeded, plan.key, as_of=TODAY, scorecard=SCORECARD, machine=MACHINE,
                         with_insight=False) is None  # shards still pending
    shards.work(seeded, plan.key, scorecard=SCORECARD, machine=MACHINE, lock=threading.Lock())
    barrier = threading.Barrier(4)

    def finisher(name: str) -> shards.Finished | None:
        barrier.wait()
        return shards.finish(seeded, plan.key, as_of=TODAY, scorecard=SCORECARD, machine=MACHINE, me=name,
                             with_insight=False)

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(finisher, ["f1", "f2", "f3", "f4"]))
    assert sum(o is not None for o in outcomes) == 1
    step = shards.run_status(seeded, plan.key).finish
    assert step is not None and step.status == "done" and step.attempts == 1
    assert shards.finish(seeded, plan.key, as_of=TODAY, scorecard=SCORECARD, machine=MACHINE) is None


def test_the_nightly_on_postgresql_runs_in_shards_and_reports_a_failed_one(
    seeded: Engine, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(database_url=pg_url, recompute_shards=3)
    result = run_job("nightly", seeded, settings, now=NIGHTLY_AT)
    assert result.status == "ok", result.describe()
    step = result.step("recompute")
    assert step.counts["accounts"] == ACCOUNTS and step.counts["shards"] == 3 == step.counts["shards_here"]
    assert "3 shard(s) by " in step.note
    assert result.step("alerts").error is None

    # Another day, and one account range that always fails.
    with seeded.connect() as conn:
        bad = int(conn.execute(text("SELECT lo FROM recompute_shard WHERE shard = 1")).scalar_one())
    real = shards.recompute

    def failing(session: Session, **kwargs: Any) -> Any:
        if bad in kwargs["accounts"]:
            raise RuntimeError("disk full")
        return real(session, **kwargs)

    monkeypatch.setattr(shards, "recompute", failing)
    failed = run_job("nightly", seeded, settings, now=NIGHTLY_AT + timedelta(days=1))
    assert failed.status == "failed"
    error = failed.step("recompute").error or ""
    assert "1 of 3 shard(s) failed — shard 1 [" in error and "after 3 attempt(s): RuntimeError: disk full" in error
    assert failed.step("alerts").skipped
    assert "FAILED" in failed.describe()


def test_a_replica_helps_with_an_open_run_of_its_own_configuration_only(seeded: Engine, pg_url: str) -> None:
    from bot.push.shardwork import help_once

    plan = _plan(seeded, 3)
    with session_scope(seeded) as s:  # a run planned with another scorecard: not this replica's to help with
        s.execute(text("INSERT INTO recompute_shard (run_key, as_of, shard, lo, hi, status, attempts, created_at, "
                       "accounts, stage_moves, seconds) VALUES ('2025-03-14:otherconfig', :day, 0, 0, 10, "
                       "'pending', 0, now(), 0, 0, 0)"), {"day": TODAY})
    done = help_once(seeded, load_settings(database_url=pg_url))
    assert sorted(r.shard for r in done) == [0, 1, 2]
    assert shards.run_status(seeded, plan.key).done
    assert shards.open_runs(seeded) == ["2025-03-14:otherconfig"]
