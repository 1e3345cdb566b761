"""The sharded nightly recompute on PostgreSQL with one worker process and with two (`python -m bench --only shards
--postgres auto`).

The portfolio is generated in SQL (`generate_series`: accounts, 90 days of account-total usage each, then the usage
roll-ups), which loads 100,000 accounts × 90 days in about a minute, where the demo generator takes many. It is
scored once for yesterday and once for today before anything is timed, so both timed runs are the same repeat of
tonight's run (no backfill, no stage moves left to make). A timed run: plan the run, work its shards — in this
process alone, or with a helper process started beforehand (a second replica) — then the whole-portfolio step
(here without the churn model, which has a scenario of its own: the portfolio frame for the alert rules and the
`recompute_state` record). The run's shard rows are removed between the two runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.datasets import DAYS, TODAY
from lifecycle import shards
from lifecycle.recompute import recompute
from lifecycle.scoring import rollups
from lifecycle.scoring.health import default_scorecard
from lifecycle.scoring.stages import load_stage_machine
from lifecycle.store.db import make_engine, session_scope, upgrade

ROOT = Path(__file__).resolve().parent.parent

_ACCOUNTS_SQL = """
INSERT INTO account (external_id, name, name_key, segment, arr, currency, seats, contract_start, renewal_date,
                     status, stage, stage_since, stage_pinned, created_at, updated_at)
SELECT 'B' || g, 'Bench ' || g, 'bench ' || g, CASE WHEN g % 3 = 0 THEN 'enterprise' ELSE 'smb' END,
       1000 * (1 + g % 50), 'USD', 5 + g % 20, DATE '{today}' - (40 + g % 600), DATE '{today}' + (5 + g % 300),
       'active', (ARRAY['onboarding', 'adoption', 'expansion', 'renewal'])[1 + g % 4],
       TIMESTAMP '{today}' - make_interval(days => 10 + g % 200), false, now(), now()
FROM generate_series(1, {n}) g
"""

# Account totals for every day: active users a share of the seats that, for one account in ten, falls over the
# last month; logins and events follow the users, with per-day noise from a hash of (account, day).
_USAGE_SQL = """
INSERT INTO usage_daily (account_id, day, feature, active_users, logins, events)
SELECT a.id, DATE '{today}' - d, '',
       GREATEST(0, (a.seats * (30 + (h % 70)) / 100) - CASE WHEN a.id % 10 = 0 AND d < 30 THEN a.seats / 2 ELSE 0 END),
       h % 7, 10 + h % 400
FROM account a CROSS JOIN generate_series(1, {days}) d
CROSS JOIN LATERAL (SELECT abs(hashtext(a.id::text || ':' || d::text)) AS h) r
"""


def generate(url: str, accounts: int) -> dict[str, Any]:
    """Migrate the empty PostgreSQL database at `url` and load the portfolio in SQL; returns the load times."""
    engine = make_engine(url)
    upgrade(engine)
    times: dict[str, float] = {}
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text(_ACCOUNTS_SQL.format(today=TODAY.isoformat(), n=accounts)))
        times["accounts"] = time.perf_counter() - started
        conn.execute(text(_USAGE_SQL.format(today=TODAY.isoformat(), days=DAYS)))
        times["usage"] = time.perf_counter() - started - times["accounts"]
        conn.execute(text(f"UPDATE account SET last_usage_date = DATE '{TODAY - timedelta(days=1)}'"))
        rollups.rebuild(conn)
        conn.exec_driver_sql("DELETE FROM account_change")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
    times["total"] = time.perf_counter() - started
    scorecard, machine = default_scorecard(), load_stage_machine()
    for day in (TODAY - timedelta(days=1), TODAY):  # yesterday's scores, then tonight's stage moves settled
        with session_scope(engine) as session:
            recompute(session, as_of=day, scorecard=scorecard, machine=machine, backfill=False, with_insight=False)
    times["warm_up"] = time.perf_counter() - started - times["total"]
    with engine.connect() as conn:
        usage_rows = int(conn.execute(text("SELECT COUNT(*) FROM usage_daily")).scalar_one())
    engine.dispose()
    return {"seconds": times, "usage_rows": usage_rows}


def helper(url: str, key: str, ready: str) -> None:
    """A second replica: wait for the run to be planned, work its shards until none is left, then exit."""
    engine = make_engine(url)
    scorecard, machine = default_scorecard(), load_stage_machine()
    with engine.connect() as conn:  # connect (and import) before the run starts, as a running replica has
        conn.exec_driver_sql("SELECT 1")
    Path(ready).touch()
    while not shards.run_status(engine, key).shards:
        time.sleep(0.05)
    shards.work(engine, key, scorecard=scorecard, machine=machine, me=f"helper:{os.getpid()}")
    engine.dispose()


def sharded_run(url: str, workers: int, shard_count: int) -> dict[str, Any]:
    """One timed sharded run with `workers` processes (this one and workers - 1 helpers)."""
    engine = make_engine(url)
    scorecard, machine = default_scorecard(), load_stage_machine()
    key = shards.run_key(TODAY, scorecard, machine)
    with session_scope(engine) as session:
        session.execute(text("DELETE FROM recompute_shard"))
    helpers: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    readies = [Path(f"/tmp/csbot-bench-helper-{os.getpid()}-{i}") for i in range(workers - 1)]
    for ready in readies:
        ready.unlink(missing_ok=True)
        helpers.append(subprocess.Popen([sys.executable, "-c", "import sys; from bench.shards import helper; "
                                         "helper(*sys.argv[1:])", url, key, str(ready)], cwd=ROOT, env=env))
    while not all(r.exists() for r in readies):
        time.sleep(0.05)
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    started = time.perf_counter()
    run = shards.nightly_recompute(engine, as_of=TODAY, scorecard=scorecard, machine=machine, shards=shard_count,
                                   with_insight=False, poll=0.1, me=f"planner:{os.getpid()}")
    finished = time.perf_counter()
    for proc in helpers:
        proc.wait(timeout=600)
    for ready in readies:
        ready.unlink(missing_ok=True)
    status = run.status
    engine.dispose()
    assert run.problem() is None, run.problem()
    shard_seconds = [s.seconds for s in status.shards]
    return {
        "workers": workers,
        "shards": len(status.shards),
        "seconds": finished - started,
        "finish_seconds": status.finish.seconds if status.finish else None,
        "shard_seconds": shard_seconds,
        "by_worker": status.by_worker(),
        "accounts": run.accounts,
        "grades": run.grades(),
    }
