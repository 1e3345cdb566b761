"""Benchmark portfolios: demo databases of N accounts × 90 days, seeded once into `bench/.cache/` and copied per run.

A dataset is the deterministic demo portfolio of `lifecycle.intake.demo.seed_demo` at a fixed "today", so every run and
every machine measure the same rows. Seeding 100,000 accounts takes a few minutes, so the database file is kept
under `bench/.cache/`, keyed by size, days, seed, day, the recipe below and a hash of the generator's source (a
changed generator seeds afresh); a scenario that writes (recompute) works on a copy, never on the cached file.

The recipe makes the benchmarked night an ordinary one: last week's health is backfilled, then yesterday's nightly
work runs in full (recompute, stage rules, alert rules), so tonight's run finds yesterday's snapshots, stages that
the rules already settled and the alerts already open — as on any night but the very first.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from sqlmodel import Session

from lifecycle.intake import demo
from lifecycle.recompute import backfill_health, recompute
from lifecycle.scoring.alerts import run_alert_rules
from lifecycle.scoring.health import Scorecard, default_scorecard
from lifecycle.scoring.stages import StageMachine, load_stage_machine
from lifecycle.store.db import make_engine, session_scope, upgrade

BENCH_DIR = Path(__file__).resolve().parent
# CSBOT_BENCH_CACHE moves the cache (the tests keep theirs in a temporary directory).
CACHE_DIR = Path(os.environ.get("CSBOT_BENCH_CACHE") or BENCH_DIR / ".cache")
TODAY = date(2025, 6, 30)  # the day every benchmark recomputes; usage ends the day before
DAYS = 90
SEED = 7
HISTORY = (7,)  # last week's snapshot, which the health-drop rule compares with
RECIPE = 2  # bump when the seeding steps change, so that cached files are seeded again


@dataclass(frozen=True)
class Dataset:
    """A seeded demo database file and what it holds."""

    path: Path
    accounts: int
    usage_rows: int
    seeded_now: bool

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"


def _generator_hash() -> str:
    source = Path(demo.__file__).read_bytes()
    return hashlib.sha256(source).hexdigest()[:10]


def cache_path(accounts: int, cache_dir: Path = CACHE_DIR) -> Path:
    return cache_dir / f"demo-{accounts}-{DAYS}d-s{SEED}-{TODAY.isoformat()}-r{RECIPE}-{_generator_hash()}.db"


def _count_usage(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM usage_daily").fetchone()[0])


def seed(path: Path, accounts: int) -> None:
    """Seed the portfolio into a new SQLite file at `path` (written aside and renamed when complete)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    for stale in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        stale.unlink(missing_ok=True)
    seed_url(f"sqlite:///{partial}", accounts)
    partial.rename(path)


def seed_url(url: str, accounts: int) -> None:
    """Migrate the empty database at `url` and seed the portfolio with its recipe (see the module docstring)."""
    engine = make_engine(url)
    upgrade(engine)
    with session_scope(engine) as session:
        demo.seed_demo(session, accounts=accounts, days=DAYS, seed=SEED, today=TODAY)
    scorecard, machine = default_scorecard(), load_stage_machine()
    with session_scope(engine) as session:
        backfill_health(session, today=TODAY, offsets=HISTORY, scorecard=scorecard, machine=machine)
    yesterday = TODAY - timedelta(days=1)
    with session_scope(engine) as session:
        recompute_health_and_stages(session, yesterday, scorecard, machine)
    with session_scope(engine) as session:
        run_alert_rules(session, yesterday, scorecard=scorecard)
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()


def recompute_health_and_stages(session: Session, as_of: date, scorecard: Scorecard, machine: StageMachine) -> Any:
    """`lifecycle.recompute.recompute` without its insight step (churn model, cohorts), when it has one: the
    recompute scenario measures health, stages and alert rules; the model has a scenario of its own."""
    options: dict[str, Any] = {}
    if "with_insight" in inspect.signature(recompute).parameters:
        options["with_insight"] = False
    return recompute(session, as_of=as_of, scorecard=scorecard, machine=machine, **options)


def dataset(accounts: int, cache_dir: Path = CACHE_DIR) -> Dataset:
    """The cached portfolio of `accounts` accounts, seeding it first when it is not there yet, and migrated to
    the current schema (a new index or column of a later revision is added to the cached file once)."""
    path = cache_path(accounts, cache_dir)
    seeded_now = not path.exists()
    if seeded_now:
        seed(path, accounts)
    else:
        engine = make_engine(f"sqlite:///{path}")
        upgrade(engine)
        engine.dispose()
    return Dataset(path=path, accounts=accounts, usage_rows=_count_usage(path), seeded_now=seeded_now)


def working_copy(source: Dataset, target: Path) -> Dataset:
    """A copy of the dataset to mutate (`dataset` has already migrated the cached file)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source.path, target)
    return Dataset(path=target, accounts=source.accounts, usage_rows=source.usage_rows, seeded_now=False)
