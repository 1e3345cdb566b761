"""The sharded nightly recompute: account-id ranges that several processes (the `csbot serve` replicas) work on
together through the database.

A run is one day's full recompute with one configuration; its key is the day and the scorecard + stage machine
digest (`run_key`). `plan` splits the account ids into `shards` contiguous ranges [lo, hi) holding about the same
number of active accounts (one NTILE query), as rows of `recompute_shard`; a second planner of the same run finds
them and creates nothing. The ranges together cover every id (the first starts at 0, the last ends above any id),
so churned accounts are in the frame of their shard as in a full run.

Workers `claim` the next pending shard (`SELECT … FOR UPDATE SKIP LOCKED` on PostgreSQL, so concurrent workers
never wait for each other), with a lease (`lease_until`); `run_shard` is `recompute(session, accounts=<ids in the
range>, with_insight=False)` — the same backfill, signals, health, snapshots, stage rules and change marks as a
full run gives those accounts — committed with the shard's `done` in one transaction. A shard whose lease lapsed
(its worker died) is claimed again by the next worker; every claim counts an attempt, and after `max_attempts` the
shard is `failed` with the reason. A shard whose recompute raised goes back to `pending` (or `failed` on its last
attempt) with the error. Processing a shard twice (a lease that lapsed under a slow worker) is harmless: its
results are the same both times.

The whole-portfolio step — what must see every account: the insight (churn model and scores, cohorts, tiers, card
facts) and the `recompute_state` record of the full run — is the run's row with shard number `FINISH_SHARD` (-1).
`finish` claims it only once every range shard is done, with one conditional UPDATE, so it runs exactly once per
run however many callers try; it builds the whole-portfolio signals frame from what the shards stored and returns
it for the alert rules. The rule for who calls it: the planner (the nightly job), after waiting for every shard
(`wait`, which keeps working and reclaiming shards itself, so a single process finishes everything alone). A run
with a failed shard is never finished: the nightly reports the failure and skips its alert rules, and the next
`csbot recompute` recomputes every account (no full run is on record for the day).

At most one shard is worked at a time per process (`_WORKING`), so a replica that runs the nightly and helps with
its own run in the background does not compete with itself.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import Date, DateTime, Engine, bindparam, text
from sqlmodel import Session

from lifecycle.insight.churn import InsightConfig
from lifecycle.recompute import (
    RecomputeSummary,
    config_digest,
    portfolio_insight,
    recompute,
    record_full_run,
    refresh_changed,
)
from lifecycle.scoring.health import Scorecard
from lifecycle.scoring.signals import build_signals
from lifecycle.scoring.stages import StageMachine
from lifecycle.store.db import session_scope
from lifecycle.store.models import RecomputeShard, utcnow

log = logging.getLogger("csbot.shards")

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
FINISH_SHARD = -1
DEFAULT_SHARDS_POSTGRES = 8
DEFAULT_LEASE = timedelta(minutes=10)
MAX_ATTEMPTS = 3
NO_UPPER = 2**31  # above any account id (a 32-bit key)
HOST = f"{socket.gethostname()}:{os.getpid()}"

# One shard at a time per process: the nightly's own work and the server's helper loop share it.
_WORKING = threading.Lock()


def shard_count(setting: int | None, dialect: str) -> int:
    """The shards of a run: `CSBOT_RECOMPUTE_SHARDS` when set, else 8 on PostgreSQL and 1 elsewhere (SQLite is
    one process: a single shard is the plain full recompute)."""
    if setting is not None:
        return max(1, int(setting))
    return DEFAULT_SHARDS_POSTGRES if dialect == "postgresql" else 1


def run_key(as_of: date, scorecard: Scorecard, machine: StageMachine) -> str:
    return f"{as_of.isoformat()}:{config_digest(scorecard, machine)}"


def _postgres(session_or_engine: Session | Engine) -> bool:
    bind = session_or_engine.get_bind() if isinstance(session_or_engine, Session) else session_or_engine
    return bind.dialect.name == "postgresql"


# --- planning ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    key: str
    as_of: date
    shards: int  # range shards (without the whole-portfolio step)
    created: bool  # False: the run was planned before (by this or another process)


# The first active id of each of n buckets of about equal size, in one pass over the primary key.
_BUCKETS_SQL = text(
    "SELECT bucket, MIN(id) FROM (SELECT id, NTILE(:n) OVER (ORDER BY id) AS bucket FROM account "
    "WHERE status = 'active') t GROUP BY bucket ORDER BY bucket"
)


def split_ranges(session: Session, shards: int) -> list[tuple[int, int]]:
    """[lo, hi) account-id ranges with about the same number of active accounts each, covering every id."""
    starts = [int(row[1]) for row in session.execute(_BUCKETS_SQL, {"n": max(1, shards)}).all()]
    bounds = [0, *starts[1:], NO_UPPER]
    return list(itertools.pairwise(bounds))


def plan(session: Session, *, as_of: date, scorecard: Scorecard, machine: StageMachine, shards: int) -> Plan:
    """The run of `as_of` with this configuration, its shard rows created unless they exist (the caller
    commits). On PostgreSQL concurrent planners queue on a transaction advisory lock named after the run, so
    the second one finds the first one's rows."""
    key = run_key(as_of, scorecard, machine)
    if _postgres(session):
        session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": f"shards:{key}"})
    existing = session.execute(
        text("SELECT COUNT(*) FROM recompute_shard WHERE run_key = :key AND shard >= 0"), {"key": key}
    ).scalar_one()
    if existing:
        return Plan(key, as_of, int(existing), created=False)
    ranges = split_ranges(session, shards)
    rows = [RecomputeShard(run_key=key, as_of=as_of, shard=n, lo=lo, hi=hi) for n, (lo, hi) in enumerate(ranges)]
    rows.append(RecomputeShard(run_key=key, as_of=as_of, shard=FINISH_SHARD, lo=0, hi=0))
    session.add_all(rows)
    session.flush()
    log.info("planned recompute run %s: %d shard(s)", key, len(ranges))
    return Plan(key, as_of, len(ranges), created=True)


# --- claiming and running one shard ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    id: int
    key: str
    as_of: date
    shard: int
    lo: int
    hi: int
    attempt: int
    reclaimed_from: str | None  # the worker whose lease had lapsed, when this is a reclaim


@dataclass
class ShardResult:
    shard: int
    status: str  # done, pending (to be tried again), failed, lost (another worker took it over meanwhile)
    accounts: int = 0
    stage_moves: int = 0
    seconds: float = 0.0
    error: str | None = None


_EXPIRE_SQL = text(
    "UPDATE recompute_shard SET status = 'failed', lease_until = NULL, finished_at = :now, "
    "error = 'gave up after ' || CAST(attempts AS VARCHAR(12)) || ' attempts: the lease of ' "
    "|| COALESCE(claimed_by, '?') || ' lapsed' "
    "WHERE run_key = :key AND shard >= 0 AND status = 'running' AND lease_until < :now AND attempts >= :max"
).bindparams(bindparam("now", type_=DateTime()))

_PICK_SQL = (
    "SELECT id, as_of, shard, lo, hi, attempts, status, claimed_by FROM recompute_shard "
    "WHERE run_key = :key AND shard >= 0 AND (status = 'pending' OR (status = 'running' AND lease_until < :now)) "
    "ORDER BY shard LIMIT 1"
)

_TAKE_SQL = text(
    "UPDATE recompute_shard SET status = 'running', claimed_by = :me, lease_until = :lease, "
    "attempts = attempts + 1, started_at = :now WHERE id = :id"
).bindparams(bindparam("now", type_=DateTime()), bindparam("lease", type_=DateTime()))


def claim(
    engine: Engine, key: str, *, me: str = HOST, lease: timedelta = DEFAULT_LEASE, max_attempts: int = MAX_ATTEMPTS,
    now: datetime | None = None,
) -> Claim | None:
    """Claim the next pending range shard of run `key`, or one whose lease lapsed (committed); None when there is
    none. Running shards whose lease lapsed on their last attempt are marked failed first."""
    now = now or utcnow()
    pick = _PICK_SQL + (" FOR UPDATE SKIP LOCKED" if _postgres(engine) else "")
    with session_scope(engine) as session:
        session.execute(_EXPIRE_SQL, {"key": key, "now": now, "max": max_attempts})
        row = session.execute(text(pick).bindparams(bindparam("now", type_=DateTime())),
                              {"key": key, "now": now}).first()
        if row is None:
            return None
        shard_id, as_of, shard, lo, hi, attempts, status, holder = row
        session.execute(_TAKE_SQL, {"me": me, "lease": now + lease, "now": now, "id": shard_id})
    if isinstance(as_of, str):  # SQLite hands back the ISO text
        as_of = date.fromisoformat(as_of)
    reclaimed = holder if status == RUNNING else None
    if reclaimed:
        log.warning("shard %d of %s: the lease of %s lapsed; claimed again (attempt %d)", shard, key, holder,
                    attempts + 1)
    return Claim(int(shard_id), key, as_of, int(shard), int(lo), int(hi), int(attempts) + 1, reclaimed)


_DONE_SQL = text(
    "UPDATE recompute_shard SET status = 'done', finished_at = :now, lease_until = NULL, accounts = :accounts, "
    "stage_moves = :moves, seconds = :seconds, error = NULL "
    "WHERE id = :id AND claimed_by = :me AND attempts = :attempt AND status = 'running'"
).bindparams(bindparam("now", type_=DateTime()))

_RETRY_SQL = text(
    "UPDATE recompute_shard SET status = CASE WHEN attempts >= :max THEN 'failed' ELSE 'pending' END, "
    "lease_until = NULL, finished_at = :now, error = :error "
    "WHERE id = :id AND claimed_by = :me AND attempts = :attempt AND status = 'running'"
).bindparams(bindparam("now", type_=DateTime()))


def run_shard(
    engine: Engine, job: Claim, *, scorecard: Scorecard, machine: StageMachine, me: str = HOST,
    max_attempts: int = MAX_ATTEMPTS,
) -> ShardResult:
    """Recompute the accounts of a claimed shard and mark it done, in one transaction; on an error the shard goes
    back to pending (failed on its last attempt) with the error."""
    started = time.perf_counter()
    try:
        with session_scope(engine) as session:
            ids = [int(a) for a in session.execute(
                text("SELECT id FROM account WHERE id >= :lo AND id < :hi ORDER BY id"),
                {"lo": job.lo, "hi": job.hi}).scalars()]
            summary = (recompute(session, as_of=job.as_of, scorecard=scorecard, machine=machine, accounts=ids,
                                 with_insight=False)
                       if ids else RecomputeSummary(as_of=job.as_of, accounts=0, mode="accounts"))
            seconds = round(time.perf_counter() - started, 3)
            marked = session.connection().execute(_DONE_SQL, {
                "now": utcnow(), "accounts": summary.accounts, "moves": summary.stage_moves, "seconds": seconds,
                "id": job.id, "me": me, "attempt": job.attempt}).rowcount
    except Exception as exc:  # recorded on the shard; another attempt (or the failure) follows from it
        error = f"{type(exc).__name__}: {exc}"[:2000]
        log.exception("shard %d of %s failed (attempt %d)", job.shard, job.key, job.attempt)
        with session_scope(engine) as session:
            session.execute(_RETRY_SQL, {"max": max_attempts, "now": utcnow(), "error": error, "id": job.id,
                                         "me": me, "attempt": job.attempt})
        status = FAILED if job.attempt >= max_attempts else PENDING
        return ShardResult(job.shard, status, seconds=round(time.perf_counter() - started, 3), error=error)
    if not marked:  # our lease lapsed and another worker took the shard over; the results are the same
        log.warning("shard %d of %s: finished after its lease lapsed; another worker has it now", job.shard, job.key)
        return ShardResult(job.shard, "lost", summary.accounts, summary.stage_moves, seconds)
    steps = ", ".join(f"{name} {t:.2f}" for name, t in summary.timings.items())
    log.info("shard %d of %s [%d, %d): %d account(s), %d stage move(s) in %.2f s (%s)", job.shard, job.key, job.lo,
             job.hi, summary.accounts, summary.stage_moves, seconds, steps)
    return ShardResult(job.shard, DONE, summary.accounts, summary.stage_moves, seconds)


def work(
    engine: Engine, key: str, *, scorecard: Scorecard, machine: StageMachine, me: str = HOST,
    lease: timedelta = DEFAULT_LEASE, max_attempts: int = MAX_ATTEMPTS, blocking: bool = True,
    lock: threading.Lock | None = None,
) -> list[ShardResult]:
    """Claim and run shards of run `key` one after the other until none is left to claim, holding `lock` (default:
    the process's) for each. With `blocking` False, return at once when the lock is taken (this process is
    already working a shard: the server's helper loop)."""
    results: list[ShardResult] = []
    held = _WORKING if lock is None else lock
    while True:
        if not held.acquire(blocking=blocking):
            break
        try:
            job = claim(engine, key, me=me, lease=lease, max_attempts=max_attempts)
            if job is None:
                break
            results.append(run_shard(engine, job, scorecard=scorecard, machine=machine, me=me,
                                     max_attempts=max_attempts))
        finally:
            held.release()
    return results


# --- the run as a whole ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardRow:
    shard: int
    lo: int
    hi: int
    status: str
    claimed_by: str | None
    attempts: int
    accounts: int
    stage_moves: int
    seconds: float
    error: str | None


@dataclass
class RunStatus:
    key: str
    shards: list[ShardRow] = field(default_factory=list)  # the range shards, in order
    finish: ShardRow | None = None  # the whole-portfolio step

    @property
    def open(self) -> int:
        """Range shards still pending or running."""
        return sum(s.status in (PENDING, RUNNING) for s in self.shards)

    @property
    def failed(self) -> list[ShardRow]:
        return [s for s in self.shards if s.status == FAILED]

    @property
    def done(self) -> bool:
        return bool(self.shards) and all(s.status == DONE for s in self.shards)

    @property
    def finished(self) -> bool:
        return self.finish is not None and self.finish.status == DONE

    def by_worker(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.shards:
            if s.status == DONE and s.claimed_by:
                counts[s.claimed_by] = counts.get(s.claimed_by, 0) + 1
        return counts


def run_status(engine: Engine, key: str) -> RunStatus:
    """Every shard of run `key` as stored now."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT shard, lo, hi, status, claimed_by, attempts, accounts, stage_moves, seconds, error "
            "FROM recompute_shard WHERE run_key = :key ORDER BY shard"), {"key": key}).all()
    status = RunStatus(key)
    for r in rows:
        row = ShardRow(int(r[0]), int(r[1]), int(r[2]), str(r[3]), r[4], int(r[5]), int(r[6]), int(r[7]),
                       float(r[8]), r[9])
        if row.shard == FINISH_SHARD:
            status.finish = row
        else:
            status.shards.append(row)
    return status


def latest_key(engine: Engine, as_of: date | None = None) -> str | None:
    """The key of the newest run (of `as_of`, when given)."""
    sql = "SELECT run_key FROM recompute_shard"
    params: dict[str, object] = {}
    if as_of is not None:
        sql += " WHERE as_of = :as_of"
        params["as_of"] = as_of
    stmt = text(sql + " ORDER BY created_at DESC, id DESC LIMIT 1")
    if as_of is not None:
        stmt = stmt.bindparams(bindparam("as_of", type_=Date()))
    with engine.connect() as conn:
        found = conn.execute(stmt, params).scalar()
    return None if found is None else str(found)


def open_runs(engine: Engine) -> list[str]:
    """Keys of the runs with a range shard to claim (pending, or running on a lapsed lease), oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT run_key, MIN(created_at) FROM recompute_shard WHERE shard >= 0 AND status IN ('pending', "
            "'running') GROUP BY run_key ORDER BY MIN(created_at)")).all()
    return [str(r[0]) for r in rows]


def wait(
    engine: Engine, key: str, *, scorecard: Scorecard, machine: StageMachine, me: str = HOST,
    lease: timedelta = DEFAULT_LEASE, max_attempts: int = MAX_ATTEMPTS, poll: float = 1.0,
    sleep: Callable[[float], None] = time.sleep, lock: threading.Lock | None = None,
) -> tuple[RunStatus, list[ShardResult]]:
    """Work on run `key` until no range shard is pending or running: claim what is pending, then, while other
    workers hold the rest, poll and claim again what their lapsed leases give back. Returns the run's final state
    and the shards this process ran."""
    mine: list[ShardResult] = []
    while True:
        mine += work(engine, key, scorecard=scorecard, machine=machine, me=me, lease=lease,
                     max_attempts=max_attempts, lock=lock)
        status = run_status(engine, key)
        if not status.open:
            return status, mine
        sleep(poll)


_FINISH_CLAIM_SQL = text(
    "UPDATE recompute_shard SET status = 'running', claimed_by = :me, lease_until = :lease, "
    "attempts = attempts + 1, started_at = :now "
    "WHERE run_key = :key AND shard = -1 AND (status = 'pending' OR (status = 'running' AND lease_until < :now)) "
    "AND NOT EXISTS (SELECT 1 FROM recompute_shard o WHERE o.run_key = :key AND o.shard >= 0 "
    "AND o.status <> 'done') RETURNING id, attempts"
).bindparams(bindparam("now", type_=DateTime()), bindparam("lease", type_=DateTime()))


@dataclass
class Finished:
    signals: pd.DataFrame  # the whole-portfolio frame after the run, health filled in (for the alert rules)
    insight: str
    seconds: float


def portfolio_frame(session: Session, as_of: date, machine: StageMachine) -> pd.DataFrame:
    """The whole-portfolio signals frame as a full `recompute` leaves it: health as the shards stored it for the
    active accounts, none for churned ones (they are not scored)."""
    frame = build_signals(session, as_of, activation_ratio=machine.activation.ratio,
                          activation_window=machine.activation.window_days)
    inactive = frame["status"] != "active"
    frame.loc[inactive, "health_score"] = np.nan
    frame["health_grade"] = frame["health_grade"].astype(object).where(~inactive, np.nan)
    return frame


def finish(
    engine: Engine, key: str, *, as_of: date, scorecard: Scorecard, machine: StageMachine,
    insight: InsightConfig | None = None, me: str = HOST, lease: timedelta = DEFAULT_LEASE,
    max_attempts: int = MAX_ATTEMPTS, with_insight: bool = True,
) -> Finished | None:
    """The run's whole-portfolio step, exactly once: claimed (one conditional UPDATE) only when every range shard
    is done and nobody holds it; then the insight and the `recompute_state` record, committed with the step's
    `done`. None when it is not this caller's to run (shards still open or failed, or done or running
    elsewhere)."""
    now = utcnow()
    with session_scope(engine) as session:
        taken = session.execute(_FINISH_CLAIM_SQL, {"me": me, "lease": now + lease, "now": now, "key": key}).first()
    if taken is None:
        return None
    step_id, attempt = int(taken[0]), int(taken[1])
    started = time.perf_counter()
    try:
        with session_scope(engine) as session:
            frame = portfolio_frame(session, as_of, machine)
            note = (portfolio_insight(session, as_of=as_of, signals=frame, scorecard=scorecard, machine=machine,
                                      insight=insight) if with_insight else "")
            record_full_run(session, as_of=as_of, scorecard=scorecard, machine=machine)
            seconds = round(time.perf_counter() - started, 3)
            session.execute(_DONE_SQL, {"now": utcnow(), "accounts": len(frame), "moves": 0, "seconds": seconds,
                                        "id": step_id, "me": me, "attempt": attempt})
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:2000]
        log.exception("the whole-portfolio step of %s failed", key)
        with session_scope(engine) as session:
            session.execute(_RETRY_SQL, {"max": max_attempts, "now": utcnow(), "error": error,
                                         "id": step_id, "me": me, "attempt": attempt})
        raise
    log.info("whole-portfolio step of %s: %s (%.2f s)", key, note or "no insight", seconds)
    return Finished(frame, note, seconds)


# --- the nightly's recompute, sharded ------------------------------------------------------------------------------


@dataclass
class ShardedRun:
    """What the nightly's sharded recompute did."""

    key: str
    status: RunStatus
    mine: list[ShardResult]  # the shards this process ran
    signals: pd.DataFrame | None = None
    insight: str = ""
    mode: str = "sharded"  # sharded, or incremental (the day's run was complete already)
    changed: int = 0  # accounts the incremental run recomputed

    @property
    def accounts(self) -> int:
        return sum(s.accounts for s in self.status.shards) if self.mode == "sharded" else self.changed

    @property
    def stage_moves(self) -> int:
        return sum(s.stage_moves for s in self.status.shards) if self.mode == "sharded" else 0

    def grades(self) -> dict[str, int]:
        if self.signals is None:
            return {}
        active = self.signals[self.signals["status"] == "active"]
        return {str(k): int(v) for k, v in active["health_grade"].value_counts().items()}

    def problem(self) -> str | None:
        """Why the run is not complete, naming each failed shard; None when it is."""
        failed = self.status.failed
        if failed:
            parts = [f"shard {s.shard} [{s.lo}, {s.hi}) after {s.attempts} attempt(s): {s.error}" for s in failed]
            return f"{len(failed)} of {len(self.status.shards)} shard(s) failed — " + "; ".join(parts)
        step = self.status.finish
        if self.mode == "sharded" and (step is None or step.status != DONE):
            why = f": {step.error}" if step is not None and step.error else ""
            return f"the whole-portfolio step did not finish{why}"
        return None

    def describe(self) -> str:
        if self.mode == "incremental":
            return f"the day's sharded run was complete; {self.changed:,} changed account(s) recomputed"
        workers = ", ".join(f"{host} {n}" for host, n in sorted(self.status.by_worker().items()))
        return f"{len(self.status.shards)} shard(s) by {workers or 'nobody'}"


def nightly_recompute(
    engine: Engine, *, as_of: date, scorecard: Scorecard, machine: StageMachine, shards: int,
    insight: InsightConfig | None = None, me: str = HOST, lease: timedelta = DEFAULT_LEASE,
    max_attempts: int = MAX_ATTEMPTS, poll: float = 1.0, with_insight: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> ShardedRun:
    """Plan the day's run (or find it), work its shards with whoever helps, wait for all of them, then run the
    whole-portfolio step. A run complete already (a second nightly the same day) recomputes only the accounts
    changed since, as `csbot recompute` would, and rebuilds the frame for the alert rules."""
    with session_scope(engine) as session:
        planned = plan(session, as_of=as_of, scorecard=scorecard, machine=machine, shards=shards)
    status = run_status(engine, planned.key)
    if status.finished:
        with session_scope(engine) as session:
            summary = refresh_changed(session, as_of=as_of, scorecard=scorecard, machine=machine)
        with session_scope(engine) as session:
            frame = portfolio_frame(session, as_of, machine)
        return ShardedRun(planned.key, status, [], frame, mode="incremental",
                          changed=summary.accounts if summary else 0)
    status, mine = wait(engine, planned.key, scorecard=scorecard, machine=machine, me=me, lease=lease,
                        max_attempts=max_attempts, poll=poll, sleep=sleep)
    run = ShardedRun(planned.key, status, mine)
    while not run.status.failed:
        done = finish(engine, planned.key, as_of=as_of, scorecard=scorecard, machine=machine, insight=insight,
                      me=me, lease=lease, max_attempts=max_attempts, with_insight=with_insight)
        if done is not None:
            run.signals, run.insight = done.signals, done.insight
        run.status = run_status(engine, planned.key)
        step = run.status.finish
        if step is None or step.status in (DONE, FAILED) or run.status.open:
            break
        sleep(poll)  # another caller holds the step: wait for it to finish, or for its lease to lapse
    if run.signals is None and run.status.finished:
        with session_scope(engine) as session:
            run.signals = portfolio_frame(session, as_of, machine)
    return run
