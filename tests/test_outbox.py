"""The delivery outbox and its worker: the core state machine on SQLite, then end to end with the real slack_sdk
and python-telegram-bot clients against the fake platform servers, crashes (simulated and a real SIGKILL of a
worker process), and two workers on one PostgreSQL database.

Time is injected (`now=`) wherever a test depends on it; nothing sleeps to wait for a backoff.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session, col, select
from telegram import Bot

from adapters.slack.port import SlackPort, delivery_client
from adapters.telegram.port import TelegramPort
from bot.core.messages import Button, Card, CardField, Image, Reply, Section
from bot.push.notifier import (
    DeliveryPort,
    DrainStats,
    drain_once,
    payload_to_reply,
    reply_to_payload,
    run_worker,
)
from lifecycle.store import outbox
from lifecycle.store.db import make_engine
from lifecycle.store.models import Account, Alert, Delivery, utcnow
from tests.fakes.slack_api import FakeSlackAPI
from tests.fakes.telegram_api import TOKEN, FakeTelegramAPI

ROOT = Path(__file__).resolve().parent.parent
SLACK_TOKEN = "xoxb-outbox-test"


def alert_reply(n: int = 1) -> Reply:
    return Reply(
        text=f"Risk alert {n}",
        cards=[Card(
            title="Acme Corp", subtitle="health fell 18 points",
            fields=(CardField("ARR", "$120,000"), CardField("Grade", "red")),
            sections=(Section("Why", ("Logins -40 %", "2 urgent tickets")),),
            buttons=(Button("Acknowledge", "cmd", f"ack {n}", "primary"), Button("Snooze 7 days", "cmd",
                                                                                f"snooze {n} 7")),
        )],
    )


def add(engine: Engine, platform: str, target: str, n: int = 1) -> int:
    with Session(engine, expire_on_commit=False) as s:
        row = outbox.enqueue(s, platform=platform, target=target, payload=reply_to_payload(alert_reply(n)))
        s.commit()
        assert row.id is not None
        return row.id


def rows(engine: Engine) -> dict[int, Delivery]:
    with Session(engine) as s:
        return {r.id: r for r in s.exec(select(Delivery)).all() if r.id is not None}


def posted_delivery_ids(fake: FakeSlackAPI) -> list[int]:
    return [c.params["metadata"]["event_payload"]["delivery_id"] for c in fake.calls_to("chat.postMessage",
                                                                                      ok_only=True)]


@pytest.fixture
def slack_port(fake_slack: FakeSlackAPI) -> SlackPort:
    return SlackPort(delivery_client(SLACK_TOKEN, fake_slack.api_url))


@pytest.fixture
async def telegram_port(fake_telegram: FakeTelegramAPI) -> AsyncIterator[TelegramPort]:
    bot = Bot(TOKEN, base_url=fake_telegram.api_url, base_file_url=f"{fake_telegram.url}/file/bot")
    async with bot:
        yield TelegramPort(bot)


# --- the core ------------------------------------------------------------------------------------------------


def test_backoff_doubles_from_thirty_seconds_and_stops_at_an_hour() -> None:
    assert [outbox.backoff(n).total_seconds() for n in range(1, 9)] == [
        30, 60, 120, 240, 480, 960, 1920, 3600,  # 30 × 2^7 = 3840 s is over the one-hour cap
    ]


def test_reply_survives_the_json_payload() -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\xff"
    reply = alert_reply(7)
    reply.images.append(Image(png=png, filename="health.png", title="Health"))
    reply.buttons.append(Button("Open", "cmd", "account Acme Corp"))
    payload = json.loads(json.dumps(reply_to_payload(reply)))
    assert payload["images"][0]["png"] == "iVBORw0KGgoA/w=="
    assert payload_to_reply(payload) == reply


def test_unknown_payload_version_is_refused() -> None:
    with pytest.raises(ValueError, match="version"):
        payload_to_reply({"v": 99, "text": "hi"})


def test_alert_and_its_delivery_commit_or_vanish_together(engine: Engine) -> None:
    def raise_alert(s: Session, key: str) -> None:
        account = Account(external_id=f"ACC-{key}", name=key, name_key=key.lower())
        s.add(account)
        s.flush()
        alert = Alert(account_id=account.id or 0, rule="health_drop", dedupe_key=key, title="Health fell")
        s.add(alert)
        s.flush()
        outbox.enqueue(s, platform="slack", target="U1", payload=reply_to_payload(alert_reply()),
                       alert_id=alert.id)

    with Session(engine) as s:
        raise_alert(s, "rolled-back")
        s.rollback()
    with Session(engine) as s:
        raise_alert(s, "kept")
        s.commit()
    with Session(engine) as s:
        assert [a.dedupe_key for a in s.exec(select(Alert)).all()] == ["kept"]
        [delivery] = s.exec(select(Delivery)).all()
        kept = s.exec(select(Alert)).one()
        assert (delivery.alert_id, delivery.status, delivery.attempts) == (kept.id, "pending", 0)


def test_enqueue_with_a_dedupe_key_adds_one_row(engine: Engine) -> None:
    with Session(engine) as s:
        first = outbox.enqueue(s, platform="slack", target="U1", payload={"v": 1}, kind="digest", dedupe="d:1")
        again = outbox.enqueue(s, platform="slack", target="U1", payload={"v": 1}, kind="digest", dedupe="d:1")
        other = outbox.enqueue(s, platform="slack", target="U2", payload={"v": 1}, kind="digest", dedupe="d:1")
        s.commit()
        assert again.id == first.id
        assert other.id != first.id
        assert len(outbox.list_deliveries(s)) == 2


def test_claim_takes_due_rows_oldest_first_under_a_lease(engine: Engine) -> None:
    ids = [add(engine, "slack", "C1", n) for n in range(4)]
    tg = add(engine, "telegram", "1001")
    t0 = utcnow() + timedelta(seconds=1)
    with Session(engine) as s:
        s.execute(text("UPDATE delivery SET next_attempt_at = :later WHERE id = :id"),
                  {"later": t0 + timedelta(hours=1), "id": ids[3]})
        s.commit()
        lease = timedelta(minutes=5)
        first = outbox.claim(s, limit=2, now=t0, lease=lease, platforms=["slack"])
        assert [r.id for r in first] == ids[:2]
        assert {(r.status, r.attempts, r.next_attempt_at) for r in first} == {("sending", 1, t0 + lease)}
        # the claimed rows are leased; the row due in an hour and the Telegram row are not for this worker
        second = outbox.claim(s, limit=10, now=t0, lease=lease, platforms=["slack"])
        assert [r.id for r in second] == [ids[2]]
        assert outbox.claim(s, limit=10, now=t0 + lease - timedelta(seconds=1), platforms=["slack"]) == []
        # the lease ran out (the worker died): the rows are taken again, as a second attempt
        third = outbox.claim(s, limit=10, now=t0 + lease, lease=lease, platforms=["slack"])
        assert [(r.id, r.attempts) for r in third] == [(ids[0], 2), (ids[1], 2), (ids[2], 2)]
        assert [r.id for r in outbox.claim(s, limit=10, now=t0)] == [tg]


def test_a_stale_worker_cannot_overwrite_the_attempt_that_replaced_it(engine: Engine) -> None:
    delivery_id = add(engine, "slack", "C1")
    t0 = utcnow() + timedelta(seconds=1)
    lease = timedelta(minutes=5)
    with Session(engine) as s:
        [old] = outbox.claim(s, limit=1, now=t0, lease=lease)
        [new] = outbox.claim(s, limit=1, now=t0 + lease, lease=lease)
        assert (old.attempts, new.attempts) == (1, 2)
        assert outbox.mark_retry(s, delivery_id, "timeout", None, t0, attempt=old.attempts) == "sending"
        assert outbox.mark_retry(s, delivery_id, "boom", None, t0 + lease, attempt=new.attempts) == "pending"
        row = s.get(Delivery, delivery_id, populate_existing=True)
        assert row is not None
        # the second attempt's backoff: 30 s × 2^(2-1)
        assert (row.last_error, row.next_attempt_at) == ("boom", t0 + lease + timedelta(seconds=60))


# --- end to end ----------------------------------------------------------------------------------------------


async def test_slack_delivery_reaches_the_dm_and_the_channel(
    engine: Engine, fake_slack: FakeSlackAPI, slack_port: SlackPort
) -> None:
    to_user = add(engine, "slack", "U1", 1)
    to_channel = add(engine, "slack", "C42", 2)
    stats = await drain_once(engine, {"slack": slack_port}, now=utcnow() + timedelta(seconds=1))
    assert stats == DrainStats(sent=2)
    assert [c.params["users"] for c in fake_slack.calls_to("conversations.open")] == ["U1"]
    posts = fake_slack.calls_to("chat.postMessage", ok_only=True)
    assert [p.params["channel"] for p in posts] == ["DU1", "C42"]
    assert posts[0].params["text"].startswith("Risk alert 1")
    assert posts[0].params["metadata"] == {"event_type": "csbot_delivery",
                                           "event_payload": {"delivery_id": to_user}}
    assert any(b.get("type") == "actions" for b in posts[0].params["blocks"])
    done = rows(engine)
    assert {done[i].status for i in (to_user, to_channel)} == {"sent"}
    assert done[to_user].message_ref == "DU1:1700000000.000001"
    assert done[to_channel].message_ref == "C42:1700000000.000002"


async def test_telegram_delivery_sends_html_with_the_keyboard(
    engine: Engine, fake_telegram: FakeTelegramAPI, telegram_port: TelegramPort
) -> None:
    delivery_id = add(engine, "telegram", "1001")
    stats = await drain_once(engine, {"telegram": telegram_port}, now=utcnow() + timedelta(seconds=1))
    assert stats == DrainStats(sent=1)
    [sent] = fake_telegram.calls_to("sendMessage")
    assert sent.value("chat_id") == 1001
    assert sent.params["parse_mode"] == "HTML"
    assert "<b>Acme Corp</b>" in sent.params["text"]
    keyboard = sent.value("reply_markup")["inline_keyboard"]
    assert [[b["callback_data"] for b in row] for row in keyboard] == [["c:ack 1", "c:snooze 1 7"]]
    row = rows(engine)[delivery_id]
    assert (row.status, row.message_ref, row.attempts) == ("sent", "1001:1", 1)


async def test_slack_429_waits_for_retry_after_then_delivers_once(
    engine: Engine, fake_slack: FakeSlackAPI, slack_port: SlackPort
) -> None:
    delivery_id = add(engine, "slack", "C1")
    t0 = utcnow() + timedelta(seconds=1)
    fake_slack.fail_next("chat.postMessage", 429, retry_after=120)
    ports: dict[str, DeliveryPort] = {"slack": slack_port}

    assert await drain_once(engine, ports, now=t0) == DrainStats(retried=1)
    row = rows(engine)[delivery_id]
    assert (row.status, row.next_attempt_at) == ("pending", t0 + timedelta(seconds=120))  # 120 s > 30 s backoff
    assert row.last_error is not None and "rate limit" in row.last_error

    assert await drain_once(engine, ports, now=t0 + timedelta(seconds=119)) == DrainStats()
    assert await drain_once(engine, ports, now=t0 + timedelta(seconds=120)) == DrainStats(sent=1)
    assert len(fake_slack.calls_to("chat.postMessage")) == 2
    assert posted_delivery_ids(fake_slack) == [delivery_id]
    # the retry looked in the channel first: the failed attempt might have been posted
    assert [c.params["channel"] for c in fake_slack.calls_to("conversations.history")] == ["C1"]
    assert rows(engine)[delivery_id].status == "sent"


async def test_a_short_retry_after_still_gets_the_backoff(
    engine: Engine, fake_slack: FakeSlackAPI, slack_port: SlackPort
) -> None:
    delivery_id = add(engine, "slack", "C1")
    t0 = utcnow() + timedelta(seconds=1)
    fake_slack.fail_next("chat.postMessage", 429, retry_after=1)
    await drain_once(engine, {"slack": slack_port}, now=t0)
    assert rows(engine)[delivery_id].next_attempt_at == t0 + timedelta(seconds=30)


async def test_telegram_429_waits_for_retry_after_then_delivers_once(
    engine: Engine, fake_telegram: FakeTelegramAPI, telegram_port: TelegramPort
) -> None:
    delivery_id = add(engine, "telegram", "1001")
    t0 = utcnow() + timedelta(seconds=1)
    fake_telegram.fail_next("sendMessage", 1, retry_after=45)
    ports: dict[str, DeliveryPort] = {"telegram": telegram_port}
    assert await drain_once(engine, ports, now=t0) == DrainStats(retried=1)
    assert rows(engine)[delivery_id].next_attempt_at == t0 + timedelta(seconds=45)
    assert await drain_once(engine, ports, now=t0 + timedelta(seconds=44)) == DrainStats()
    assert await drain_once(engine, ports, now=t0 + timedelta(seconds=45)) == DrainStats(sent=1)
    assert len(fake_telegram.attempts_to("sendMessage")) == 2
    assert len(fake_telegram.calls_to("sendMessage")) == 1


async def test_permanent_failure_is_kept_as_failed_and_retried_on_demand(
    engine: Engine, fake_slack: FakeSlackAPI, slack_port: SlackPort
) -> None:
    delivery_id = add(engine, "slack", "C1")
    fake_slack.fail_next("chat.postMessage", 500, retry_after=None, times=3)
    ports: dict[str, DeliveryPort] = {"slack": slack_port}
    now = utcnow() + timedelta(seconds=1)
    results = []
    for _ in range(3):
        results.append(await drain_once(engine, ports, now=now, max_attempts=3))
        now += timedelta(hours=1)
    assert results == [DrainStats(retried=1), DrainStats(retried=1), DrainStats(failed=1)]
    assert await drain_once(engine, ports, now=now + timedelta(days=30)) == DrainStats()  # failed stays put

    with Session(engine) as s:
        [failed] = outbox.list_deliveries(s, status="failed")
        assert (failed.id, failed.attempts) == (delivery_id, 3)
        assert failed.last_error is not None and "SlackApiError" in failed.last_error
        assert outbox.retry_failed(s) == 1
        assert outbox.retry_failed(s) == 0
    assert await drain_once(engine, ports, now=now) == DrainStats(sent=1)
    row = rows(engine)[delivery_id]
    assert (row.status, row.attempts, row.last_error) == ("sent", 1, None)
    assert posted_delivery_ids(fake_slack) == [delivery_id]


async def test_retry_failed_takes_only_the_given_rows(engine: Engine) -> None:
    ids = [add(engine, "slack", "C1", n) for n in range(3)]
    with Session(engine) as s:
        s.execute(text("UPDATE delivery SET status = 'failed'"))
        s.commit()
        assert outbox.retry_failed(s, [ids[0], ids[2]]) == 2
        assert [r.id for r in outbox.list_deliveries(s, status="failed")] == [ids[1]]
        assert [r.id for r in outbox.list_deliveries(s, status="pending")] == [ids[2], ids[0]]


async def test_worker_that_died_after_posting_is_reconciled_from_slack_history(
    engine: Engine, fake_slack: FakeSlackAPI, slack_port: SlackPort
) -> None:
    ids = [add(engine, "slack", target, n) for n, target in enumerate(["U1", "C1", "U1"])]
    t0 = utcnow() + timedelta(seconds=1)
    lease = timedelta(minutes=5)
    with Session(engine) as s:
        claimed = outbox.claim(s, limit=10, now=t0, lease=lease, worker="doomed")
    first = claimed[0]
    assert first.id is not None
    # the doomed worker posts the first message and dies before recording it
    await slack_port.send(first.target, payload_to_reply(first.payload), delivery_id=first.id)

    assert await drain_once(engine, {"slack": slack_port}, now=t0 + lease - timedelta(seconds=1)) == DrainStats()
    stats = await drain_once(engine, {"slack": slack_port}, now=t0 + lease)
    assert stats == DrainStats(sent=3, reconciled=1)
    assert sorted(posted_delivery_ids(fake_slack)) == ids  # 0 lost, 0 duplicated
    done = rows(engine)
    assert {r.status for r in done.values()} == {"sent"}
    assert done[ids[0]].message_ref == "DU1:1700000000.000001"


async def test_telegram_cannot_search_so_a_lost_outcome_is_sent_again(
    engine: Engine, fake_telegram: FakeTelegramAPI, telegram_port: TelegramPort
) -> None:
    delivery_id = add(engine, "telegram", "1001")
    t0 = utcnow() + timedelta(seconds=1)
    lease = timedelta(minutes=5)
    with Session(engine) as s:
        [row] = outbox.claim(s, limit=1, now=t0, lease=lease)
    await telegram_port.send(row.target, payload_to_reply(row.payload), delivery_id=delivery_id)
    assert await telegram_port.find_sent(row.target, delivery_id) is None
    # at least once: nothing is lost, and the window is exactly this sent-but-unrecorded message
    assert await drain_once(engine, {"telegram": telegram_port}, now=t0 + lease) == DrainStats(sent=1)
    assert len(fake_telegram.calls_to("sendMessage")) == 2
    assert rows(engine)[delivery_id].status == "sent"


async def test_a_row_whose_worker_died_on_its_last_attempt_fails_without_posting(
    engine: Engine, fake_telegram: FakeTelegramAPI, telegram_port: TelegramPort
) -> None:
    delivery_id = add(engine, "telegram", "1001")
    t0 = utcnow() + timedelta(seconds=1)
    lease = timedelta(minutes=5)
    with Session(engine) as s:
        outbox.claim(s, limit=1, now=t0, lease=lease)
        outbox.claim(s, limit=1, now=t0 + lease, lease=lease)  # both workers died
    stats = await drain_once(engine, {"telegram": telegram_port}, now=t0 + 2 * lease, max_attempts=2)
    assert stats == DrainStats(failed=1)
    assert fake_telegram.calls_to("sendMessage") == []
    row = rows(engine)[delivery_id]
    assert (row.status, row.attempts) == ("failed", 3)


async def test_run_worker_delivers_until_stopped(
    engine: Engine, fake_telegram: FakeTelegramAPI, telegram_port: TelegramPort
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(engine, {"telegram": telegram_port}, stop, interval=0.05))
    ids = [add(engine, "telegram", str(chat)) for chat in (1001, 1002)]
    await fake_telegram.wait_for("sendMessage", 2)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert sorted(c.value("chat_id") for c in fake_telegram.calls_to("sendMessage")) == [1001, 1002]
    assert {rows(engine)[i].status for i in ids} == {"sent"}


# --- a real crash --------------------------------------------------------------------------------------------

WORKER_SCRIPT = '''
"""A worker that stops dead right after Slack accepted its Nth message, before recording it (to be killed)."""
import asyncio
import sys
from pathlib import Path

from adapters.slack.port import SlackPort, delivery_client
from bot.push.notifier import drain_once
from lifecycle.store.db import make_engine

db_url, api_url, hang_after, marker, limit = sys.argv[1:6]


class HangsAfterPosting:
    platform = "slack"

    def __init__(self, inner):
        self.inner = inner
        self.posted = 0

    async def send(self, target, reply, *, delivery_id):
        ref = await self.inner.send(target, reply, delivery_id=delivery_id)
        self.posted += 1
        if self.posted == int(hang_after):
            staged = Path(marker + ".part")
            staged.write_text(str(delivery_id))
            staged.replace(marker)  # atomic: the test never reads a half-written marker
            await asyncio.Event().wait()
        return ref

    async def find_sent(self, target, delivery_id):
        return await self.inner.find_sent(target, delivery_id)


async def main():
    port = HangsAfterPosting(SlackPort(delivery_client("xoxb-doomed", api_url)))
    await drain_once(make_engine(db_url), {"slack": port}, limit=int(limit), worker="doomed")


asyncio.run(main())
'''


def test_worker_killed_mid_batch_then_restarted_loses_and_repeats_nothing(
    engine: Engine, db_url: str, fake_slack: FakeSlackAPI, slack_port: SlackPort, tmp_path: Path
) -> None:
    ids = [add(engine, "slack", ["U1", "C1"][n % 2], n) for n in range(8)]
    script = tmp_path / "doomed_worker.py"
    script.write_text(WORKER_SCRIPT)
    marker = tmp_path / "posted"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script), db_url, fake_slack.api_url, "3", str(marker), "5"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), proc.stderr.read().decode() if proc.poll() is not None else "worker stalled"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    in_flight = int(marker.read_text())
    statuses = {i: r.status for i, r in rows(engine).items()}
    assert in_flight == ids[2]
    assert statuses == {**dict.fromkeys(ids[:2], "sent"), **dict.fromkeys(ids[2:5], "sending"),
                        **dict.fromkeys(ids[5:], "pending")}
    assert posted_delivery_ids(fake_slack) == ids[:3]

    after_lease = utcnow() + outbox.DEFAULT_LEASE + timedelta(seconds=1)
    stats = asyncio.run(drain_once(engine, {"slack": slack_port}, now=after_lease, worker="restarted"))
    assert stats == DrainStats(sent=6, reconciled=1)
    assert Counter(posted_delivery_ids(fake_slack)) == Counter(ids)  # each exactly once
    done = rows(engine)
    assert {r.status for r in done.values()} == {"sent"}
    assert done[in_flight].message_ref == "DU1:1700000000.000003"  # ids[2] went to U1's DM


# --- PostgreSQL ----------------------------------------------------------------------------------------------


def test_claim_skips_rows_another_transaction_holds(pg_engine: Engine) -> None:
    ids = [add(pg_engine, "slack", "C1", n) for n in range(3)]
    now = utcnow() + timedelta(seconds=1)
    other = make_engine(pg_engine.url.render_as_string(hide_password=False))
    try:
        with pg_engine.connect() as holder:
            holder.execute(text("SELECT id FROM delivery WHERE id = :id FOR UPDATE"), {"id": ids[0]})
            with Session(other) as s:
                s.execute(text("SET lock_timeout = '5s'"))  # a blocked claim fails the test instead of hanging
                assert [r.id for r in outbox.claim(s, limit=10, now=now)] == ids[1:]
            holder.rollback()
        with Session(other) as s:
            assert [r.id for r in outbox.claim(s, limit=10, now=now)] == ids[:1]
    finally:
        other.dispose()


async def test_two_workers_on_one_postgres_send_each_delivery_once(
    pg_engine: Engine, fake_slack: FakeSlackAPI
) -> None:
    ids = [add(pg_engine, "slack", ["U1", "C1", "C2"][n % 3], n) for n in range(30)]
    url = pg_engine.url.render_as_string(hide_password=False)
    engines = [make_engine(url), make_engine(url)]

    async def work(engine: Engine, name: str) -> int:
        port = SlackPort(delivery_client(SLACK_TOKEN, fake_slack.api_url))
        sent = 0
        while True:
            stats = await drain_once(engine, {"slack": port}, limit=4, worker=name)
            if not stats.handled:
                return sent
            sent += stats.sent

    try:
        counts = await asyncio.gather(work(engines[0], "w1"), work(engines[1], "w2"))
    finally:
        for e in engines:
            e.dispose()
    assert sum(counts) == len(ids)
    assert Counter(posted_delivery_ids(fake_slack)) == Counter(ids)
    with Session(pg_engine) as s:
        assert set(s.exec(select(Delivery.status)).all()) == {"sent"}
        assert s.exec(select(col(Delivery.attempts)).distinct()).all() == [1]
