"""Scheduled work, declared once: the job registry, one-off runs (`run_job`) and the APScheduler set-up.

A job is a function decorated with `@job(name, cron=…, help=…)` that takes a `JobContext` and records what it did
in named steps (`ctx.step(...)`), each timed and logged. The same function runs from `csbot serve`'s scheduler
and from `csbot jobs run <name>`; both go through `run_job`, which on PostgreSQL first takes a session-level
advisory lock derived from the job's name on a connection of its own, so with several replicas a job runs on one
of them at a time (the others log and skip). SQLite has one process by design and just runs.

Every job is idempotent for its period: a second nightly run on the same day raises and enqueues nothing new,
digests and renewal prompts are sent once per day/week/window, delivery drains whatever is due. That is what makes
a skipped or doubled run harmless when several schedulers share one persistent job store.

Jobs never talk to a chat platform directly: the `deliver` job gets its `DeliveryPort`s from a factory the
composition root (CLI, server) hands in, so this module imports no platform SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Literal

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from bot.push.digests import manager_weekly, owner_digests
from bot.push.notifier import default_worker_name, drain_once
from bot.push.renewals import renewal_prompts
from bot.push.routing import escalate, route_alerts, with_platforms
from bot.push.surveys import dispatch_surveys, survey_config
from bot.push.undelivered import Routes, reroute_waiting
from bot.understanding.memory import forget_idle
from lifecycle.recompute import recompute
from lifecycle.scoring.alerts import load_alert_config, run_alert_rules
from lifecycle.scoring.health import load_scorecard
from lifecycle.scoring.stages import load_stage_machine
from lifecycle.shards import nightly_recompute, shard_count
from lifecycle.store.db import has_table, session_scope
from lifecycle.store.errors import NotFoundError
from lifecycle.store.models import Delivery, JobRun, utcnow
from lifecycle.store.partitions import ensure_partitions, is_partitioned, prune_usage
from lifecycle.store.settings import Settings, cron_trigger
from lifecycle.surveys import survey_secret

if TYPE_CHECKING:
    import pandas as pd

    from bot.push.notifier import DeliveryPort
    from lifecycle.scoring.alerts import AlertConfig
    from lifecycle.scoring.health import Scorecard
    from lifecycle.scoring.stages import StageMachine

log = logging.getLogger("csbot.jobs")

JOBSTORE_TABLE = "apscheduler_jobs"
DELIVER_BATCH = 50
DELIVER_MAX_BATCHES = 40  # one run sends at most 2,000 messages; the next minute picks up the rest
_LOCK_NAMESPACE = "csbot.job:"

PortsFactory = Callable[[Settings], AbstractAsyncContextManager[Mapping[str, "DeliveryPort"]]]
CronSource = str | Callable[[Settings], str]


# --- steps and results -------------------------------------------------------------------------------------


@dataclass
class StepResult:
    """One step of a job: how long it took, what it counted, and its error when it failed."""

    name: str
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    note: str = ""
    error: str | None = None
    skipped: bool = False

    def add(self, **counts: int) -> None:
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + int(value)

    def describe(self) -> str:
        if self.skipped:
            return f"{self.name}: skipped ({self.note})"
        parts = [f"{key.replace('_', ' ')} {value:,}" for key, value in self.counts.items()]
        if self.note:
            parts.append(self.note)
        body = ", ".join(parts) or "nothing to do"
        if self.error is not None:
            body = f"FAILED: {self.error}" + (f" (after: {body})" if self.counts else "")
        return f"{self.name}: {body} ({self.seconds:.2f} s)"


JobStatus = Literal["ok", "failed", "skipped"]


@dataclass
class JobResult:
    """What one run of a job did. `skipped` means another replica held the job's lock."""

    job: str
    status: JobStatus
    started_at: datetime
    today: date
    seconds: float = 0.0
    steps: list[StepResult] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def count(self, key: str) -> int:
        """A counter summed over the steps (e.g. `deliveries_enqueued`)."""
        return sum(step.counts.get(key, 0) for step in self.steps)

    def step(self, name: str) -> StepResult:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def describe(self) -> str:
        if self.status == "skipped":
            return f"{self.job}: skipped — {self.error}"
        head = f"{self.job} ({self.today.isoformat()}): {self.status} in {self.seconds:.2f} s"
        lines = [head, *(f"  {step.describe()}" for step in self.steps)]
        if self.error is not None and not any(step.error for step in self.steps):
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)


# --- the context a job runs in -----------------------------------------------------------------------------


@dataclass
class JobContext:
    """What a job gets: the database, the settings, the run's clock, and the ports factory for delivery.

    `now` is naive UTC (as stored); `today` is the day being processed in `CSBOT_TIMEZONE`.
    """

    engine: Engine
    settings: Settings
    now: datetime
    today: date
    ports: PortsFactory | None = None
    steps: list[StepResult] = field(default_factory=list)
    # The platforms messages are routed to; None: those with a bot token (`Settings.delivery_platforms`).
    platforms: tuple[str, ...] | None = None

    @property
    def delivery_platforms(self) -> tuple[str, ...]:
        return self.platforms if self.platforms is not None else self.settings.delivery_platforms

    @cached_property
    def scorecard(self) -> Scorecard:
        return load_scorecard(self.settings.scorecard_file)

    @cached_property
    def machine(self) -> StageMachine:
        return load_stage_machine(self.settings.stages_file)

    @cached_property
    def alert_config(self) -> AlertConfig:
        """The alert rules and routing, routing only to the configured platforms."""
        return with_platforms(load_alert_config(self.settings.alerts_file), self.delivery_platforms)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[StepResult]:
        """Time and record one step; a failure is recorded (and logged) instead of ending the job, so later,
        independent steps still run. Counts the deliveries the step added to the outbox."""
        result = StepResult(name)
        self.steps.append(result)
        before = _last_delivery_id(self.engine)
        started = time.perf_counter()
        try:
            yield result
        except Exception as exc:  # recorded on the step; the job's result says failed
            result.error = f"{type(exc).__name__}: {exc}"
            log.exception("job step %s failed", name)
        finally:
            result.seconds = round(time.perf_counter() - started, 3)
        if result.error is None:
            enqueued = _deliveries_since(self.engine, before)
            if enqueued:
                result.add(deliveries_enqueued=enqueued)
        log.info("job step %s", result.describe())

    def skip(self, name: str, reason: str) -> None:
        self.steps.append(StepResult(name, note=reason, skipped=True))

    def succeeded(self, name: str) -> bool:
        return any(s.name == name and s.error is None and not s.skipped for s in self.steps)

    @property
    def failed(self) -> bool:
        return any(s.error is not None for s in self.steps)


def _last_delivery_id(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(Delivery.id), 0))).scalar_one())  # type: ignore[arg-type]


def _deliveries_since(engine: Engine, last_id: int) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(select(func.count()).select_from(Delivery).where(Delivery.id > last_id)).scalar_one()  # type: ignore[arg-type,operator]
        )


# --- the registry ------------------------------------------------------------------------------------------


JobFunction = Callable[[JobContext], None]


@dataclass(frozen=True)
class JobSpec:
    """A registered job: its schedule (a crontab string, or one read from the settings) and its help text."""

    name: str
    func: JobFunction
    cron: CronSource
    help: str
    misfire_grace: timedelta

    def crontab(self, settings: Settings) -> str:
        return self.cron(settings) if callable(self.cron) else self.cron

    def trigger(self, settings: Settings) -> CronTrigger:
        return cron_trigger(self.crontab(settings), settings.tz)



JOBS: dict[str, JobSpec] = {}


def job(
    name: str, *, cron: CronSource, help: str, misfire_grace: timedelta = timedelta(minutes=10)
) -> Callable[[JobFunction], JobFunction]:
    """Register a job under `name`. `misfire_grace` is how late a run may still start after downtime."""

    def register(func: JobFunction) -> JobFunction:
        if name in JOBS:
            raise ValueError(f"job {name!r} is declared twice")
        JOBS[name] = JobSpec(name=name, func=func, cron=cron, help=help, misfire_grace=misfire_grace)
        return func

    return register


@dataclass(frozen=True)
class JobInfo:
    """A job as `csbot jobs list` shows it; `next_run` is in `CSBOT_TIMEZONE`."""

    name: str
    schedule: str
    next_run: datetime | None
    help: str


def list_jobs(settings: Settings, *, now: datetime | None = None) -> list[JobInfo]:
    """Every registered job with its crontab and next run time after `now` (naive UTC, default: now)."""
    moment = (now or utcnow()).replace(tzinfo=None)
    aware = moment.replace(tzinfo=UTC).astimezone(settings.tz)
    infos = []
    for spec in JOBS.values():
        trigger = spec.trigger(settings)
        infos.append(JobInfo(spec.name, spec.crontab(settings), trigger.get_next_fire_time(None, aware), spec.help))
    return infos


# --- running a job once ------------------------------------------------------------------------------------


def lock_key(name: str) -> int:
    """The job's advisory-lock key: a signed 64-bit number stable across processes and Python versions
    (`hash()` is salted per process, so it would not do)."""
    digest = hashlib.blake2b(f"{_LOCK_NAMESPACE}{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextlib.contextmanager
def job_lock(engine: Engine, name: str) -> Iterator[bool]:
    """Yield whether this process may run `name` now. On PostgreSQL: `pg_try_advisory_lock` on a connection of
    its own, held for the run and released after; elsewhere always True."""
    if engine.dialect.name != "postgresql":
        yield True
        return
    key = lock_key(name)
    conn = engine.connect()
    try:
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar_one())
        # The lock belongs to the database session, not the transaction: end the transaction so the
        # connection does not sit "idle in transaction" for the whole run.
        conn.commit()
        try:
            yield got
        finally:
            if got:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    conn.commit()
                except SQLAlchemyError:
                    # A connection we cannot unlock on must not go back to the pool still holding the lock;
                    # dropping it ends its session, which releases the lock.
                    conn.invalidate()
                    log.warning("job %s: could not release its lock cleanly; dropped the connection", name)
    finally:
        conn.close()


def _local_today(now: datetime, settings: Settings) -> date:
    return now.replace(tzinfo=UTC).astimezone(settings.tz).date()


def occurrence(name: str, settings: Settings, now: datetime) -> datetime | None:
    """The scheduled occurrence that a run starting at `now` (naive UTC) belongs to: the job's latest fire
    time at or before `now`, within its misfire grace (naive UTC); None when there is none."""
    spec = JOBS[name]
    trigger = spec.trigger(settings)
    aware = now.replace(tzinfo=UTC)
    fire = trigger.get_next_fire_time(None, aware - spec.misfire_grace)
    latest: datetime | None = None
    while fire is not None and fire <= aware:
        latest = fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
    return None if latest is None else latest.astimezone(UTC).replace(tzinfo=None)


_HOST = f"{socket.gethostname()}:{os.getpid()}"


def _claim(engine: Engine, name: str, fire_time: datetime, trigger: str) -> int | None:
    """Record that this process runs `name`'s `fire_time` occurrence; None when another replica already did."""
    try:
        with session_scope(engine) as session:
            run = JobRun(job=name, fire_time=fire_time, trigger=trigger, host=_HOST)
            session.add(run)
            session.flush()
            return run.id
    except IntegrityError:
        return None


def _finish(engine: Engine, run_id: int, result: JobResult) -> None:
    with session_scope(engine) as session:
        run = session.get(JobRun, run_id)
        if run is not None:
            run.finished_at = utcnow()
            run.status = result.status
            run.summary = result.describe()[:4000]


def run_job(
    name: str,
    engine: Engine,
    settings: Settings,
    now: datetime | None = None,
    *,
    today: date | None = None,
    ports: PortsFactory | None = None,
    fire_time: datetime | None = None,
    platforms: tuple[str, ...] | None = None,
) -> JobResult:
    """Run one job once, under its lock. `now` (naive UTC) pins the clock; `today` the day processed (default:
    `now`'s date in `CSBOT_TIMEZONE`). `ports` builds the delivery ports (needed by `deliver` only); `platforms`
    are those messages are routed to (default: those with a bot token in `settings`).
    `fire_time` is the scheduled occurrence being run (the scheduler passes it): each occurrence runs on one
    replica only, whoever claims it first in the `job_run` table; without it the run is a one-off.

    Raises `NotFoundError` for an unknown job; every other failure is in the result (status `failed`).
    Call it from a thread without a running event loop: `deliver` runs its own.
    """
    spec = JOBS.get(name)
    if spec is None:
        raise NotFoundError("job", name)
    now = now or utcnow()
    today = today or _local_today(now, settings)
    started = time.perf_counter()
    with job_lock(engine, name) as held:
        if not held:
            log.info("job %s: skipped, another replica is running it", name)
            return JobResult(name, "skipped", now, today, error="another replica holds its lock")
        run_id = _claim(engine, name, fire_time or now, "schedule" if fire_time else "manual")
        if run_id is None:
            log.info("job %s: skipped, another replica already ran the %s run", name, fire_time)
            return JobResult(name, "skipped", now, today, error=f"another replica already ran the {fire_time} run")
        ctx = JobContext(engine=engine, settings=settings, now=now, today=today, ports=ports, platforms=platforms)
        error: str | None = None
        try:
            spec.func(ctx)
        except Exception as exc:  # a job's own bug must not take the scheduler down; it is in the result
            error = f"{type(exc).__name__}: {exc}"
            log.exception("job %s failed", name)
    status: JobStatus = "failed" if error is not None or ctx.failed else "ok"
    result = JobResult(name, status, now, today, round(time.perf_counter() - started, 3), ctx.steps, error)
    try:
        _finish(engine, run_id, result)
    except SQLAlchemyError:  # the run itself is over; its record staying "running" must not hide the result
        log.warning("job %s: could not record the end of run %s", name, run_id)
    log.log(logging.WARNING if status == "failed" else logging.INFO, "%s", result.describe())
    return result


# --- the jobs ----------------------------------------------------------------------------------------------


def _nightly_cron(settings: Settings) -> str:
    return settings.nightly_cron


@job(
    "nightly",
    cron=_nightly_cron,
    help="Recompute health and stages, evaluate the alert rules and route new alerts, renewal prompts, NPS surveys, "
    "digests; usage partitions ahead and retention.",
    misfire_grace=timedelta(hours=6),
)
def nightly(ctx: JobContext) -> None:
    """The nightly pipeline. Each step commits on its own, so a failure keeps what earlier steps did; an alert
    and its deliveries commit together (one step), so an alert never exists without its messages."""
    frame = None
    shards = shard_count(ctx.settings.recompute_shards, ctx.engine.dialect.name)
    if shards <= 1:
        with ctx.step("recompute") as step, session_scope(ctx.engine) as session:
            summary = recompute(session, as_of=ctx.today, scorecard=ctx.scorecard, machine=ctx.machine)
            step.add(accounts=summary.accounts, stage_moves=summary.stage_moves)
            step.note = ", ".join(f"{grade} {n}" for grade, n in sorted(summary.grades.items()))
            frame = summary.signals
    else:
        with ctx.step("recompute") as step:
            frame = _sharded_recompute(ctx, step, shards)

    if not ctx.succeeded("recompute"):
        ctx.skip("alerts", "the recompute failed; rules would read stale health")
    else:
        with ctx.step("alerts") as step, session_scope(ctx.engine) as session:
            # The recompute's signals frame (with today's scores filled in) saves reading the usage a second time.
            raised = run_alert_rules(
                session, ctx.today, config=ctx.alert_config, now=ctx.now, scorecard=ctx.scorecard,
                frame=frame,
            )
            stats = route_alerts(session, [*raised.new, *raised.reopened], now=ctx.now, config=ctx.alert_config)
            session.flush()
            # Counted only once routing is done: a failure rolls the alerts back with their deliveries.
            step.add(new=len(raised.new), reopened=len(raised.reopened), resolved=raised.resolved)
            routed = {"held": stats.held, "to_team": stats.team, "to_digest": stats.to_digest,
                      "undeliverable": stats.undeliverable}
            step.add(**{key: value for key, value in routed.items() if value})

    with ctx.step("renewal_prompts") as step, session_scope(ctx.engine) as session:
        step.add(prompts=renewal_prompts(session, today=ctx.today, now=ctx.now, config=ctx.alert_config))

    with ctx.step("surveys") as step, session_scope(ctx.engine) as session:
        sent = dispatch_surveys(session, today=ctx.today, now=ctx.now, config=survey_config(ctx.settings),
                                secret=survey_secret(ctx.settings), platforms=ctx.alert_config.routing.platforms)
        step.add(sent=sent.sent, held=sent.held, reminders=sent.reminders, expired=sent.expired)
        if sent.undeliverable:
            step.add(undeliverable=sent.undeliverable)
        step.note = ", ".join(f"{trigger} {n}" for trigger, n in sorted(sent.by_trigger.items()))

    with ctx.step("digests") as step, session_scope(ctx.engine) as session:
        step.add(digests=owner_digests(session, now=ctx.now, config=ctx.alert_config))

    with ctx.step("conversations") as step, session_scope(ctx.engine) as session:
        step.add(forgotten=forget_idle(session, ttl_minutes=ctx.settings.context_ttl_minutes))

    with ctx.step("usage_storage") as step, session_scope(ctx.engine) as session:
        # The coming months' partitions (PostgreSQL), then the retention when CSBOT_USAGE_RETENTION_MONTHS is set.
        made = ensure_partitions(session, through=ctx.today)
        step.add(**{key: n for key, n in (("partitions_created", len(made.created)), ("rows_moved", made.moved)) if n})
        notes = [] if is_partitioned(session.connection()) else ["usage_daily is not partitioned"]
        keep = ctx.settings.usage_retention_months
        if keep:
            pruned = prune_usage(session, keep_months=keep, today=ctx.today)
            step.add(**{key: n for key, n in (("partitions_dropped", len(pruned.partitions)),
                                              ("rows_deleted", pruned.rows_deleted)) if n})
            notes.append(f"usage kept from {pruned.cutoff.isoformat()}")
        else:
            notes.append("usage retention off")
        step.note = "; ".join(notes)


def _sharded_recompute(ctx: JobContext, step: StepResult, shards: int) -> pd.DataFrame | None:
    """The nightly recompute in account-range shards that every replica helps with (`lifecycle.shards`): this
    replica plans the run, works shards, waits for the others' and runs the whole-portfolio step. A failed shard
    fails the step (naming it), so the alert rules do not read stale health."""
    run = nightly_recompute(
        ctx.engine, as_of=ctx.today, scorecard=ctx.scorecard, machine=ctx.machine, shards=shards,
        lease=timedelta(seconds=ctx.settings.recompute_lease_seconds),
    )
    step.add(accounts=run.accounts, stage_moves=run.stage_moves)
    if run.mode == "sharded":
        step.add(shards=len(run.status.shards), shards_here=sum(r.status == "done" for r in run.mine))
    grades = ", ".join(f"{grade} {n}" for grade, n in sorted(run.grades().items()))
    step.note = "; ".join(part for part in (run.describe(), grades) if part)
    problem = run.problem()
    if problem is not None:
        raise RuntimeError(f"recompute run {run.key}: {problem}")
    return run.signals


@job("deliver", cron="* * * * *", help="Send what is due in the outbox (retries with backoff).",
     misfire_grace=timedelta(seconds=50))
def deliver(ctx: JobContext) -> None:
    """Route again what waits for a platform that is not configured, then drain the outbox batch after batch
    until what is due is handled. It works on the wall clock whatever `now` says: outbox rows are stamped with
    real times."""
    with ctx.step("deliver") as step:
        if ctx.ports is None:
            step.note = "no delivery ports given"
            return
        if ctx.delivery_platforms:
            routes = Routes.from_settings(ctx.settings, platforms=ctx.delivery_platforms, config=ctx.alert_config)
            with session_scope(ctx.engine) as session:
                moved = reroute_waiting(session, routes, now=utcnow())
            step.add(**{key: n for key, n in (("rerouted", moved.routed), ("undeliverable", moved.undeliverable)) if n})
        sent, retried, failed, reconciled, platforms = asyncio.run(_drain(ctx.ports, ctx.engine, ctx.settings))
        step.add(sent=sent, retried=retried, failed=failed, reconciled=reconciled)
        if not platforms:
            step.note = (f"no chat platform configured (SLACK_BOT_TOKEN, TELEGRAM_BOT_TOKEN); "
                         f"{_waiting(ctx.engine):,} deliveries wait in the outbox")


def _waiting(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(
            select(func.count()).select_from(Delivery).where(Delivery.status == "pending")  # type: ignore[arg-type]
        ).scalar_one())


async def _drain(ports: PortsFactory, engine: Engine, settings: Settings) -> tuple[int, int, int, int, list[str]]:
    worker = f"{default_worker_name()}:deliver-job"
    sent = retried = failed = reconciled = 0
    async with ports(settings) as opened:
        if not opened:
            return 0, 0, 0, 0, []
        for _ in range(DELIVER_MAX_BATCHES):
            stats = await drain_once(engine, opened, limit=DELIVER_BATCH, worker=worker)
            sent, retried = sent + stats.sent, retried + stats.retried
            failed, reconciled = failed + stats.failed, reconciled + stats.reconciled
            if stats.handled < DELIVER_BATCH:
                break
        return sent, retried, failed, reconciled, list(opened)


@job("escalate", cron="*/15 * * * *", help="Escalate critical alerts left unacknowledged to the owner's manager.")
def escalate_job(ctx: JobContext) -> None:
    with ctx.step("escalate") as step, session_scope(ctx.engine) as session:
        step.add(escalated=escalate(session, now=ctx.now, config=ctx.alert_config))


@job("digests", cron="*/15 * * * *",
     help="Owner digests at 09:00 local time and the managers' weekly summary (each sent once per period).")
def digests_job(ctx: JobContext) -> None:
    with ctx.step("owner_digests") as step, session_scope(ctx.engine) as session:
        step.add(digests=owner_digests(session, now=ctx.now, config=ctx.alert_config))
    with ctx.step("manager_weekly") as step, session_scope(ctx.engine) as session:
        step.add(summaries=manager_weekly(session, now=ctx.now, config=ctx.alert_config))


# --- the scheduler -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Runtime:
    engine: Engine
    settings: Settings
    ports: PortsFactory | None


# Jobs in a persistent store are saved as a textual reference plus picklable arguments: the engine, settings and
# ports factory cannot be pickled, so the scheduled entry point finds them here (one scheduler per process).
_runtime: _Runtime | None = None


def scheduled_run(name: str) -> None:
    """What the scheduler calls (in a worker thread): `run_job` with the process's engine and settings."""
    if _runtime is None:
        log.error("job %s fired before the scheduler was built; skipped", name)
        return
    now = utcnow()
    run_job(name, _runtime.engine, _runtime.settings, now, ports=_runtime.ports,
            fire_time=occurrence(name, _runtime.settings, now))


def _create_jobstore_table(engine: Engine, store: SQLAlchemyJobStore) -> None:
    """Create APScheduler's job table once. Replicas starting together would race in its own CREATE TABLE (two
    creators of one PostgreSQL type clash), so on PostgreSQL the creation waits on a transaction advisory lock."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(JOBSTORE_TABLE)})
        store.jobs_t.create(conn, checkfirst=True)


def _forget_other_jobs(engine: Engine, keep: set[str]) -> None:
    """Remove stored jobs that are no longer scheduled here (renamed, or excluded), so they stop firing."""
    if not has_table(engine, JOBSTORE_TABLE):
        return
    with engine.begin() as conn:
        stored = [row[0] for row in conn.execute(text(f"SELECT id FROM {JOBSTORE_TABLE}"))]
        for job_id in stored:
            if job_id not in keep:
                conn.execute(text(f"DELETE FROM {JOBSTORE_TABLE} WHERE id = :id"), {"id": job_id})


def build_scheduler(
    engine: Engine,
    settings: Settings,
    *,
    ports: PortsFactory | None = None,
    exclude: frozenset[str] | set[str] = frozenset(),
) -> AsyncIOScheduler:
    """An (unstarted) AsyncIOScheduler with every registered job but `exclude`, in `CSBOT_TIMEZONE`, its jobs
    kept in the `apscheduler_jobs` table of the csbot database. Runs are coalesced after downtime, one at a
    time per job, and started late only within the job's misfire grace. Start it on a running event loop."""
    global _runtime
    unknown = set(exclude) - set(JOBS)
    if unknown:
        raise NotFoundError("job", ", ".join(sorted(unknown)))
    _runtime = _Runtime(engine, settings, ports)
    store = SQLAlchemyJobStore(engine=engine, tablename=JOBSTORE_TABLE)
    _create_jobstore_table(engine, store)
    scheduler = AsyncIOScheduler(
        jobstores={"default": store},
        job_defaults={"coalesce": True, "max_instances": 1},
        timezone=settings.tz,
    )
    wanted = {name for name in JOBS if name not in exclude}
    _forget_other_jobs(engine, wanted)
    for spec in JOBS.values():
        if spec.name not in wanted:
            continue
        scheduler.add_job(
            scheduled_run,
            trigger=spec.trigger(settings),
            args=[spec.name],
            id=spec.name,
            name=spec.name,
            replace_existing=True,
            misfire_grace_time=int(spec.misfire_grace.total_seconds()),
        )
    return scheduler

