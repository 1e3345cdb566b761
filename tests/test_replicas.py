"""Several replicas over one database: each scheduled occurrence of a job runs once, the outbox is drained with no
duplicate, and chat requests are served by any replica.

The first tests pin the claim on the `job_run` table (any backend). The last starts two real `csbot serve`
processes on one PostgreSQL database, with the nightly job firing every five seconds, against a fake Slack API.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from pgserver import free_port
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import Engine, func
from sqlmodel import Session, select

from bot.core.messages import Reply
from bot.push.jobs import JOBSTORE_TABLE, build_scheduler, occurrence, run_job
from bot.push.notifier import reply_to_payload
from lifecycle.intake.demo import seed_demo
from lifecycle.store import outbox
from lifecycle.store.db import has_table, make_engine, session_scope
from lifecycle.store.models import Delivery, JobRun, utcnow
from lifecycle.store.settings import cron_trigger, load_settings
from tests.fakes.slack_api import RESPONSE_URL, FakeSlackAPI

ROOT = Path(__file__).resolve().parents[1]
SIGNING_SECRET = "replica-signing-secret"
SLACK_TOKEN = "xoxb-replicas"
DEMO_MANAGER_SLACK = "U0DEMO01"
ACCOUNT = "Acme Logistics"
QUEUED = 300


# --- which occurrence a run belongs to ---------------------------------------------------------------------------


def test_occurrence_is_the_latest_fire_time_within_the_grace() -> None:
    settings = load_settings(database_url="sqlite://", nightly_cron="0 2 * * *", timezone="UTC")
    assert occurrence("nightly", settings, datetime(2026, 3, 1, 2, 0, 40)) == datetime(2026, 3, 1, 2, 0)
    # The nightly may start up to six hours late (after downtime) and is still that night's run.
    assert occurrence("nightly", settings, datetime(2026, 3, 1, 7, 59)) == datetime(2026, 3, 1, 2, 0)
    assert occurrence("nightly", settings, datetime(2026, 3, 1, 8, 0, 1)) is None
    # Escalation runs every 15 minutes with the default ten-minute grace.
    assert occurrence("escalate", settings, datetime(2026, 3, 1, 9, 39, 59)) == datetime(2026, 3, 1, 9, 30)
    assert occurrence("escalate", settings, datetime(2026, 3, 1, 9, 44)) is None


def test_occurrence_is_in_utc_when_the_schedule_is_local() -> None:
    settings = load_settings(database_url="sqlite://", nightly_cron="0 2 * * *", timezone="Asia/Shanghai")
    assert occurrence("nightly", settings, datetime(2026, 3, 1, 18, 3)) == datetime(2026, 3, 1, 18, 0)


def test_a_six_field_crontab_reads_the_first_field_as_seconds() -> None:
    trigger = cron_trigger("*/5 * * * * *", load_settings(database_url="sqlite://").tz)
    start = datetime(2026, 3, 1, 2, 0, 1).astimezone()
    first = trigger.get_next_fire_time(None, start)
    assert first is not None and first.second == 5
    assert load_settings(database_url="sqlite://", nightly_cron="30 0 2 * * 1-5").nightly_cron == "30 0 2 * * 1-5"


def test_each_scheduled_occurrence_runs_once_and_one_off_runs_always_run(engine: Engine, db_url: str) -> None:
    settings = load_settings(database_url=db_url)
    fire = datetime(2026, 3, 1, 9, 30)
    first = run_job("escalate", engine, settings, fire + timedelta(seconds=2), fire_time=fire)
    second = run_job("escalate", engine, settings, fire + timedelta(seconds=3), fire_time=fire)
    assert (first.status, second.status) == ("ok", "skipped")
    assert second.error is not None and "already ran" in second.error
    manual = [run_job("escalate", engine, settings, fire + timedelta(minutes=m)) for m in (1, 2)]
    assert [r.status for r in manual] == ["ok", "ok"]
    with Session(engine) as s:
        runs = s.exec(select(JobRun).order_by(JobRun.id)).all()  # type: ignore[arg-type]
    assert [(r.trigger, r.status) for r in runs] == [("schedule", "ok"), ("manual", "ok"), ("manual", "ok")]
    assert runs[0].fire_time == fire and runs[0].finished_at is not None and "escalate" in runs[0].summary


# --- two `csbot serve` processes on one PostgreSQL database ----------------------------------------------------------


def _serve(url: str, api: FakeSlackAPI, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CSBOT_", "SLACK_", "TELEGRAM_"))},
        "CSBOT_DATABASE_URL": url, "CSBOT_HOST": "127.0.0.1", "CSBOT_PORT": str(port),
        "CSBOT_NIGHTLY_CRON": "*/5 * * * * *", "CSBOT_LOG_LEVEL": "INFO",
        "SLACK_BOT_TOKEN": SLACK_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET, "SLACK_API_URL": api.api_url,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "adapters.cli", "serve"], cwd=log.parent, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"replica on port {port} did not become healthy:\n{log.read_text()}")


def _slash(port: int, api: FakeSlackAPI, text: str, rid: str) -> httpx.Response:
    body = urlencode({
        "token": "legacy", "team_id": "T1", "team_domain": "demo", "channel_id": "CTEAM", "channel_name": "cs-team",
        "user_id": DEMO_MANAGER_SLACK, "user_name": "maya", "command": "/cs", "text": text, "api_app_id": "A1",
        "response_url": api.response_url(rid), "trigger_id": "1.2.3",
    })
    ts = str(int(time.time()))
    signature = SignatureVerifier(SIGNING_SECRET).generate_signature(timestamp=ts, body=body)
    assert signature is not None
    return httpx.post(f"http://127.0.0.1:{port}/slack/events", content=body, timeout=30, headers={
        "Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature})


def _wait_until(check: object, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def slack_api() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI() as api:
        yield api


def test_two_replicas_share_jobs_outbox_and_chat(pg_url: str, slack_api: FakeSlackAPI, tmp_path: Path) -> None:
    engine = make_engine(pg_url)
    with Session(engine) as s:
        seed_demo(s, accounts=60, today=date.today())
        s.commit()
    with session_scope(engine) as s:
        for i in range(QUEUED):
            outbox.enqueue(s, platform="slack", target=f"CQ{i % 7}", payload=reply_to_payload(Reply(text=f"m{i}")))

    ports = (free_port(), free_port())
    logs = (tmp_path / "replica-1.log", tmp_path / "replica-2.log")
    procs = [_serve(pg_url, slack_api, port, log) for port, log in zip(ports, logs, strict=True)]
    try:
        for port, proc, log in zip(ports, procs, logs, strict=True):
            _wait_healthy(port, proc, log)

        # Chat: either replica answers a signed slash command.
        for n, port in enumerate(ports):
            assert _slash(port, slack_api, f"account {ACCOUNT}", f"r{n}").status_code == 200
        _wait_until(lambda: {c.path_id for c in slack_api.calls_to(RESPONSE_URL)} >= {"r0", "r1"}, "both answers")
        for call in slack_api.calls_to(RESPONSE_URL):
            assert call.params["blocks"][0]["text"]["text"] == ACCOUNT

        # Jobs: the nightly fires every five seconds on both schedulers; each occurrence runs on one of them.
        def nightly_runs() -> list[JobRun]:
            with Session(engine) as s:
                return list(s.exec(select(JobRun).where(JobRun.job == "nightly", JobRun.status == "ok")).all())

        try:
            _wait_until(lambda: len(nightly_runs()) >= 3, "three nightly occurrences")
        except AssertionError:
            with Session(engine) as s:
                seen = [(r.job, r.fire_time, r.status, r.summary) for r in s.exec(select(JobRun)).all()]
            raise AssertionError(f"nightly runs: {seen}\n{logs[0].read_text()[-3000:]}") from None

        # Outbox: everything due on Slack (what was queued, and what the nightly raised outside the owners' quiet
        # hours) is sent exactly once. (Telegram is not configured here: its rows wait, as they should.)
        def unsent() -> int:
            with Session(engine) as s:
                return int(s.exec(select(func.count()).select_from(Delivery)
                                  .where(Delivery.platform == "slack", Delivery.status != "sent",
                                         Delivery.next_attempt_at <= utcnow())).one())

        def pending() -> str:
            with Session(engine) as s:
                rows = s.exec(select(Delivery).where(Delivery.platform == "slack", Delivery.status != "sent",
                                                    Delivery.next_attempt_at <= utcnow())).all()
                return "; ".join(f"{d.id} {d.platform} {d.kind} {d.status} {d.next_attempt_at} {d.last_error}"
                                 for d in rows[:10])

        try:
            _wait_until(lambda: unsent() == 0, "the outbox to drain")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {unsent()} left, e.g. {pending()}") from None
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)

    runs = nightly_runs()
    fire_times = Counter(r.fire_time for r in runs)
    assert all(n == 1 for n in fire_times.values())
    first_run = min(runs, key=lambda r: r.fire_time)
    assert "recompute" in first_run.summary
    text = "".join(log.read_text() for log in logs)
    # Both schedulers fired the job: the replica that lost an occurrence says so instead of running it twice.
    assert "skipped, another replica" in text

    sent = [c for c in slack_api.calls_to("chat.postMessage", ok_only=True) if c.params.get("metadata")]
    delivery_ids = Counter(c.params["metadata"]["event_payload"]["delivery_id"] for c in sent)
    with Session(engine) as s:
        sent_ids = set(s.exec(select(Delivery.id).where(Delivery.status == "sent")).all())
    assert set(range(1, QUEUED + 1)) <= sent_ids
    assert set(delivery_ids) == sent_ids
    assert max(delivery_ids.values()) == 1
    engine.dispose()


def test_replicas_starting_together_create_the_job_table_once(pg_url: str) -> None:
    """Each replica's scheduler creates APScheduler's job table on start; started together they must not clash."""
    engines = [make_engine(pg_url) for _ in range(6)]
    try:
        with ThreadPoolExecutor(len(engines)) as pool:
            schedulers = list(pool.map(lambda e: build_scheduler(e, load_settings()), engines))
        assert len(schedulers) == len(engines)
        assert has_table(engines[0], JOBSTORE_TABLE)
    finally:
        for eng in engines:
            eng.dispose()
