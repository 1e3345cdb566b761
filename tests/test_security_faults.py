"""Faults: flaky chat platforms during delivery, a database that is not there at start-up, and one that drops its
connections in the middle of a job.

The worker killed with SIGKILL mid-batch and restarted is tested in tests/test_outbox.py
(`test_worker_killed_mid_batch_then_restarted_loses_and_repeats_nothing`: 0 lost, 0 duplicated); here the
platforms misbehave instead — 500/502/503 answers, 429s with Retry-After, and calls that hang past the client's
timeout — and every message must still arrive, exactly once. Time is injected (`now=`): nothing sleeps through
a backoff.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import Engine, event, text
from sqlmodel import Session, col, select
from telegram import Bot

from adapters.slack.port import SlackPort
from adapters.telegram.port import TelegramPort
from bot.push.jobs import run_job
from bot.push.notifier import DeliveryPort, DrainStats, drain_once
from lifecycle.intake.demo import seed_demo
from lifecycle.store import outbox
from lifecycle.store.db import ensure_schema, make_engine
from lifecycle.store.errors import ConfigError
from lifecycle.store.models import Delivery, JobRun, utcnow
from lifecycle.store.settings import load_settings
from tests.fakes.slack_api import FakeSlackAPI
from tests.fakes.telegram_api import TOKEN, FakeTelegramAPI
from tests.pgserver import PostgresServer, free_port
from tests.security_counts import SecurityCount
from tests.test_cli import csbot
from tests.test_outbox import add, posted_delivery_ids, rows

CLIENT_TIMEOUT = 1  # seconds the test clients wait; the fakes stall longer than that
STALL = 1.5


def _drain_until_done(engine: Engine, ports: dict[str, DeliveryPort], ids: list[int], *, max_passes: int = 12
                      ) -> list[DrainStats]:
    """Drain again and again, an hour apart (past any backoff or Retry-After), until every row is sent."""
    now = utcnow() + timedelta(seconds=1)
    passes = []
    for _ in range(max_passes):
        passes.append(asyncio.run(drain_once(engine, ports, now=now)))
        if all(r.status == outbox.SENT for i, r in rows(engine).items() if i in ids):
            return passes
        now += timedelta(hours=1)
    raise AssertionError(f"not all delivered after {max_passes} passes: {passes}")


def test_slack_5xx_timeouts_and_429s_still_deliver_every_message_exactly_once(
    engine: Engine, fake_slack: FakeSlackAPI, security_count: SecurityCount
) -> None:
    ids = [add(engine, "slack", ["U1", "C1", "C2"][n % 3], n) for n in range(9)]
    port = SlackPort(AsyncWebClient(token="xoxb-faults", base_url=fake_slack.api_url, timeout=CLIENT_TIMEOUT,
                                    retry_handlers=[]))
    ports: dict[str, DeliveryPort] = {"slack": port}
    faults = 0
    # First pass: two 500s, then a call that times out although Slack posted it, then a 503.
    fake_slack.fail_next("chat.postMessage", 500, retry_after=None, times=2)
    fake_slack.stall_next("chat.postMessage", STALL, times=1, deliver=True)
    faults += 3
    passes: list[DrainStats] = []
    now = utcnow() + timedelta(seconds=1)
    passes.append(asyncio.run(drain_once(engine, ports, now=now)))
    # Second pass: a 429 with Retry-After, a 502 on the history check a retry makes first, a hang nobody answers.
    fake_slack.fail_next("chat.postMessage", 429, retry_after=30, times=1)
    fake_slack.fail_next("conversations.history", 502, retry_after=None, times=1)
    fake_slack.stall_next("chat.postMessage", STALL, times=1, deliver=False)
    faults += 3
    now += timedelta(hours=1)
    passes.append(asyncio.run(drain_once(engine, ports, now=now)))
    passes += _drain_until_done(engine, ports, ids)
    assert sum(p.retried for p in passes) >= 5
    assert Counter(posted_delivery_ids(fake_slack)) == Counter(ids)  # each exactly once, the timed-out one too
    assert sum(p.reconciled for p in passes) == 1  # the post that timed out was found in the channel, not resent
    assert {r.status for i, r in rows(engine).items() if i in ids} == {outbox.SENT}
    security_count("deliveries through Slack faults (5xx, 429, timeouts): delivered once", len(ids))
    security_count("platform faults survived", faults)


async def test_telegram_5xx_timeouts_and_429s_still_deliver_every_message_exactly_once(
    engine: Engine, fake_telegram: FakeTelegramAPI, monkeypatch: pytest.MonkeyPatch, security_count: SecurityCount
) -> None:
    monkeypatch.setattr("adapters.telegram.port.READ_TIMEOUT", CLIENT_TIMEOUT)
    ids = [add(engine, "telegram", str(chat), n) for n, chat in enumerate((1001, 1002, 1003, -500) * 2)]
    bot = Bot(TOKEN, base_url=fake_telegram.api_url, base_file_url=f"{fake_telegram.url}/file/bot")
    faults = 0
    async with bot:
        ports: dict[str, DeliveryPort] = {"telegram": TelegramPort(bot)}
        now = utcnow() + timedelta(seconds=1)
        passes = []
        for fault in ("500", "502", "429", "hang", "500"):
            if fault == "429":
                fake_telegram.fail_next("sendMessage", 1, retry_after=40)
            elif fault == "hang":  # lost on its way in: the client times out, Telegram never had it
                fake_telegram.stall_next("sendMessage", STALL, 1, deliver=False)
            else:
                fake_telegram.fail_next("sendMessage", 1, status=int(fault))
            faults += 1
            passes.append(await drain_once(engine, ports, now=now))
            now += timedelta(hours=1)
        for _ in range(5):
            if all(r.status == outbox.SENT for r in rows(engine).values()):
                break
            passes.append(await drain_once(engine, ports, now=now))
            now += timedelta(hours=1)
    sent = [c for c in fake_telegram.calls_to("sendMessage")]
    assert sorted(c.params["text"].split("\n")[0] for c in sent) == sorted(
        f"Risk alert {n}" for n in range(len(ids)))  # every message once
    assert sum(p.retried for p in passes) == faults
    assert {r.status for r in rows(engine).values()} == {outbox.SENT}
    security_count("deliveries through Telegram faults (5xx, 429, timeouts): delivered once", len(ids))
    security_count("platform faults survived", faults)


async def test_a_telegram_timeout_after_telegram_accepted_is_at_least_once(
    engine: Engine, fake_telegram: FakeTelegramAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented limit: the Bot API cannot be searched, so a message Telegram accepted but whose answer was
    lost is sent again on the retry — never lost, at most one extra copy per lost answer."""
    monkeypatch.setattr("adapters.telegram.port.READ_TIMEOUT", CLIENT_TIMEOUT)
    [delivery] = [add(engine, "telegram", "1001", 1)]
    bot = Bot(TOKEN, base_url=fake_telegram.api_url, base_file_url=f"{fake_telegram.url}/file/bot")
    fake_telegram.stall_next("sendMessage", STALL, 1, deliver=True)
    async with bot:
        ports: dict[str, DeliveryPort] = {"telegram": TelegramPort(bot)}
        first = await drain_once(engine, ports, now=utcnow() + timedelta(seconds=1))
        second = await drain_once(engine, ports, now=utcnow() + timedelta(hours=1))
    assert (first, second) == (DrainStats(retried=1), DrainStats(sent=1))
    await fake_telegram.wait_for("sendMessage", 2)  # the stalled call finishes on the server after the timeout
    assert len(fake_telegram.calls_to("sendMessage")) == 2
    assert rows(engine)[delivery].status == outbox.SENT


# --- the database --------------------------------------------------------------------------------------------


def test_an_unreachable_database_at_start_up_is_retried_then_named_and_exit_2(
    tmp_path: Path, security_count: SecurityCount
) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql+psycopg://csbot:hunter2-db-password@127.0.0.1:{port}/csbot"
    started = time.monotonic()
    result = csbot("accounts", cwd=tmp_path, env={"CSBOT_DATABASE_URL": url, "CSBOT_DB_CONNECT_TIMEOUT": "2"})
    assert result.returncode == 2, result.stderr
    message = " ".join(result.stderr.split())
    assert f"Cannot reach the database at postgresql+psycopg://csbot:***@127.0.0.1:{port}/csbot" in message
    assert "gave up after" in message and "CSBOT_DB_CONNECT_TIMEOUT" in message
    assert "hunter2-db-password" not in result.stderr + result.stdout
    assert "retrying in" in result.stderr  # the backoff is visible in the log while it waits
    assert time.monotonic() - started >= 2
    security_count("database faults handled", 1)


def test_the_start_up_retry_backs_off_and_stops_at_the_timeout() -> None:
    engine = make_engine(f"postgresql+psycopg://csbot@127.0.0.1:{free_port()}/csbot")
    clock = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock[0] += seconds

    with pytest.raises(ConfigError, match="gave up after 6 tries in 12 s"):
        ensure_schema(engine, connect_timeout=12, sleep=sleep, clock=lambda: clock[0])
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.5]  # doubling from half a second, the last wait cut to the deadline
    with pytest.raises(ConfigError, match="Cannot reach") as once:
        ensure_schema(engine, connect_timeout=0)
    assert "gave up" not in str(once.value)
    engine.dispose()


def test_a_database_that_comes_up_during_the_retry_is_used(pg_server: PostgresServer) -> None:
    name = f"late_{free_port()}"
    engine = make_engine(pg_server.url(name))  # the database does not exist yet

    def create_later() -> None:
        time.sleep(1.0)
        pg_server.create_database(name)

    maker = threading.Thread(target=create_later)
    maker.start()
    try:
        ensure_schema(engine, connect_timeout=30)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM account")).scalar_one() == 0
    finally:
        maker.join()
        engine.dispose()
        pg_server.drop_database(name)


def test_connections_dropped_mid_job_fail_the_job_cleanly_and_the_next_run_succeeds(
    pg_server: PostgresServer, pg_engine: Engine, pg_url: str, security_count: SecurityCount
) -> None:
    """The database server terminates every connection while the nightly job recomputes (one shard: the plain
    recompute; the health writes go through the driver's COPY, so the fault is injected at its first read)."""
    with Session(pg_engine) as s:
        seed_demo(s, accounts=20, today=utcnow().date())
        s.commit()
    database = pg_engine.url.database
    dropped: list[str] = []

    def drop_connections_once(conn: object, cursor: object, statement: str, *args: object) -> None:
        if dropped or not statement.lstrip().upper().startswith("SELECT ACCOUNT_ID, VERSION FROM ACCOUNT_CHANGE"):
            return
        dropped.append(statement[:40])
        with pg_server.connect() as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))

    settings = load_settings(database_url=pg_url, recompute_shards=1)
    event.listen(pg_engine, "before_cursor_execute", drop_connections_once)
    try:
        failed = run_job("nightly", pg_engine, settings)
    finally:
        event.remove(pg_engine, "before_cursor_execute", drop_connections_once)
    assert dropped, "the fault was never injected"
    assert failed.status == "failed"
    broken = [step for step in failed.steps if step.error]
    assert broken and "OperationalError" in (broken[0].error or "")
    with Session(pg_engine) as s:  # the run is recorded as failed, on a fresh connection
        runs = s.exec(select(JobRun).where(JobRun.job == "nightly").order_by(col(JobRun.id))).all()
        assert [r.status for r in runs] == ["failed"]
        assert not s.exec(select(Delivery).where(col(Delivery.status) == outbox.SENDING)).all()

    again = run_job("nightly", pg_engine, settings)
    assert again.status == "ok", again.describe()
    with Session(pg_engine) as s:
        runs = s.exec(select(JobRun).where(JobRun.job == "nightly").order_by(col(JobRun.id))).all()
        assert [r.status for r in runs] == ["failed", "ok"]
    security_count("database faults handled", 1)
